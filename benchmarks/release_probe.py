"""Run the compatibility subset (``tests/test_compat_subset.py``) against a list of Ultralytics releases.

Each release is installed with ``pip install --no-deps --target`` into a throw-away folder that is put ahead of this
interpreter's site-packages, so torch and the other dependencies come from the current environment. A requirement the
environment lacks altogether (a dependency added by that release) is installed into the same folder; a release that
needs another version of one the environment has is reported as "not run" rather than run against it. Releases
outside the declared range (``ultralytics_kd.compat.SUPPORTED``) run with ``ULTRALYTICS_KD_ANY_RELEASE=1``, so that
the table shows why they fail, not only that the version check refuses them. One release at a time,
``OMP_NUM_THREADS=1``, each with its own Ultralytics settings folder (an older release would otherwise rewrite the
user's settings file).

Default list: every 10th 8.4 patch release, the newest 8.4 release, the newest release of all, and 8.3.253, read from
PyPI with ``pip index versions ultralytics``.

    python benchmarks/release_probe.py                      # the default list
    python benchmarks/release_probe.py --also 8.4.103 8.4.104 --out probe.json
    python benchmarks/release_probe.py --releases 8.4.104 --strict  # just one; exit 1 unless it passes (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from importlib.metadata import PathDistribution, distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "tests/test_compat_subset.py"


def pypi_releases() -> list[str]:
    """Every release of ``ultralytics`` on the configured index, newest first."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "ultralytics"], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"Available versions: (.*)", out)[1].replace(" ", "").split(",")


def default_list(available: list[str]) -> list[str]:
    """Every 10th 8.4 patch, the newest 8.4, the newest overall and 8.3.253, oldest first."""
    v84 = [v for v in available if v.startswith("8.4.") and not Version(v).is_prerelease]
    pick = {v for v in v84 if Version(v).micro % 10 == 0} | {max(v84, key=Version), available[0]}
    if "8.3.253" in available:
        pick.add("8.3.253")
    return sorted(pick, key=Version)


def _versions(target: Path) -> dict[str, str]:
    """Installed distributions, name -> version, with ``target`` ahead of this environment."""
    found = {}
    for d in distributions(path=[str(target), *sys.path]):
        found.setdefault(d.metadata["Name"].lower().replace("_", "-"), d.version)
    return found


def unmet(target: Path) -> list[tuple[Requirement, str | None]]:
    """The release's requirements (extras aside) that this environment, with ``target`` ahead of it, does not meet,
    each with the version found (None if absent)."""
    dist = PathDistribution(next(target.glob("ultralytics-*.dist-info")))
    have = _versions(target)
    missing = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        version = have.get(req.name.lower().replace("_", "-"))
        if version is None or (req.specifier and not req.specifier.contains(version, prereleases=True)):
            missing.append((req, version))
    return missing


def summarise(output: str) -> str:
    """The failing tests and their distinct errors, from pytest's short summary."""
    lines = [ln for ln in output.splitlines() if ln.startswith(("FAILED ", "ERROR "))]
    raised = [ln[1:].strip() for ln in output.splitlines() if re.match(r"E +\w+(Error|Exception)\b", ln)]
    errors = []
    for ln in lines:  # a collection error has no message on its summary line: take the first raised error
        msg = ln.split(" - ", 1)[1] if " - " in ln else (raised[0] if raised else ln)
        msg = re.sub(r"\x1b\[[0-9;]*m", "", msg)  # Ultralytics colours argument names in its errors
        if msg not in errors:
            errors.append(msg)
    return f"{len(lines)} failed: " + " | ".join(e[:160] for e in errors[:3]) if lines else output.strip()[-300:]


def supported(version: str) -> bool:
    """Whether ``version`` is inside the declared range (this checkout's, not that of an installed ultralytics_kd)."""
    sys.path.insert(0, str(ROOT))
    from ultralytics_kd.compat import UnsupportedUltralytics, check_version

    try:
        check_version(version)
    except UnsupportedUltralytics:
        return False
    return True


def probe(version: str, cache: Path, timeout: int) -> dict:
    """Install ``version`` under ``cache`` and run the subset on it."""
    target = cache / version
    if not (target / "ultralytics").is_dir():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile", "--target", str(target),
             f"ultralytics=={version}"],
            check=True, capture_output=True,
        )  # fmt: skip
    if absent := [str(r) for r, v in unmet(target) if v is None]:  # a dependency that release added
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *absent],
                       check=True, capture_output=True)  # fmt: skip
    if missing := unmet(target):  # another version of one this environment has: not replaced under torch's feet
        reason = "; ".join(f"{r} (have {v})" for r, v in missing)
        return {"release": version, "result": "not run", "reason": "unmet requirements: " + reason}
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(target)]),  # the checkout first: the wheel ships a `tests` too
        "OMP_NUM_THREADS": "1",
        "COLUMNS": "1000",  # pytest's summary lines carry the whole error message
        "YOLO_CONFIG_DIR": str(target / ".config"),
        "ULTRALYTICS_KD_ANY_RELEASE": "0" if supported(version) else "1",
    }
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "compat", SUBSET, "-p", "no:cacheprovider", "-W", "ignore"]
    t0 = time.time()
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"release": version, "result": "fail", "reason": f"timed out after {timeout}s", "seconds": timeout}
    seconds = round(time.time() - t0)
    tail = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    result = "pass" if r.returncode == 0 else "fail"
    return {"release": version, "result": result, "reason": "" if r.returncode == 0 else summarise(r.stdout + r.stderr),
            "summary": tail, "seconds": seconds, "output": "" if r.returncode == 0 else r.stdout[-6000:]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--releases", nargs="*", help="exact releases instead of the default list")
    p.add_argument("--also", nargs="*", default=[], help="releases to add to the default list")
    p.add_argument("--cache", type=Path, default=Path("/tmp/ul-probe"), help="where the releases are installed")
    p.add_argument("--timeout", type=int, default=600, help="seconds per release")
    p.add_argument("--out", type=Path, help="write the results as JSON here, updated after each release")
    p.add_argument("--strict", action="store_true", help="exit 1 unless every release passes")
    a = p.parse_args()
    releases = a.releases or sorted(set(default_list(pypi_releases())) | set(a.also), key=Version)
    print(f"probing {len(releases)} releases: {' '.join(releases)}", flush=True)
    results = []
    for v in releases:
        results.append(probe(v, a.cache, a.timeout))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "output"}), flush=True)
        if a.out:
            a.out.write_text(json.dumps(results, indent=1))
    print("\n| release | result | reason |\n|---|---|---|")
    for r in results:
        print(f"| {r['release']} | {r['result']} | {r['reason'] or r.get('summary', '')} |")
    if a.strict and any(r["result"] != "pass" for r in results):
        for r in results:
            print(r.get("output", ""))
        sys.exit(1)


if __name__ == "__main__":
    main()

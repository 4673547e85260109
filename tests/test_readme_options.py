"""The README's table of training options under KDTrainer names tests that exist, so a row cannot outlive its test."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_test_the_options_table_names_exists():
    text = (ROOT / "README.md").read_text()
    table = text.split("### Ultralytics' training options under KDTrainer", 1)[1].split("\n## ", 1)[0]
    named = 0
    for row in (r for r in table.splitlines() if r.startswith("| `")):
        path = None
        for ref in re.findall(r"`((?:tests/[\w/]+\.py)?(?:::\w+)?)`", row):
            file, _, func = ref.partition("::")
            path = ROOT / file if file else path  # "::name" continues the previous file of the row
            assert path is not None and path.is_file(), f"{row[:40]}: {ref} names no file"
            if func:
                assert re.search(rf"^def {func}\(", path.read_text(), re.M), f"{ref}: no test {func} in {path.name}"
                named += 1
    assert named >= 15

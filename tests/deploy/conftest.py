"""Reuse the distillation fixtures; they cache on disk, so the teacher is trained once per session."""

from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path

_spec = spec_from_file_location("_kd_distill_fixtures_deploy", Path(__file__).parents[1] / "distill" / "conftest.py")
_fixtures = module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

TINY, NAMES = _fixtures.TINY, _fixtures.NAMES
make_dataset, save_untrained = _fixtures.make_dataset, _fixtures.save_untrained
data_yaml, teacher_pt, tiny, untrained = _fixtures.data_yaml, _fixtures.teacher_pt, _fixtures.tiny, _fixtures.untrained

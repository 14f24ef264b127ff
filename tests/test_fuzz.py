"""A short differential fuzzing run against torch (``make fuzz`` runs it for
minutes), and every failure it ever saved, replayed."""
import json

import pytest
from hypothesis import HealthCheck, given, settings

from fuzzing import CORPUS, cases, check


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(case=cases())
def test_fuzz_against_torch(case):
    check(case)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.json")), ids=lambda p: p.stem)
def test_saved_failures_stay_fixed(path):
    check(json.loads(path.read_text()))

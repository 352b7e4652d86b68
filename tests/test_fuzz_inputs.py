"""Property: no mutation of a small valid COCO file, of its images or of an image given to
demo.py takes the command down. Each outcome is an exit status 0 or a clean error naming the
file, never a traceback, a signal or a timeout (see tests/fuzz_inputs.py; benchmarks/
fuzz_inputs.py runs a few hundred such cases)."""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz_inputs import CASES, GOOD, Base, Runner


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    base = Base(tmp_path_factory.mktemp("fuzz-base"))
    with Runner(base.model) as runner:
        yield base, runner


@settings(max_examples=24, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(command=st.sampled_from(["eval", "eval", "demo", "convert"]),
       rng=st.randoms(use_true_random=False))
def test_no_input_takes_a_command_down(fuzz, tmp_path_factory, command, rng):
    base, runner = fuzz
    case = CASES[command](rng, base, tmp_path_factory.mktemp("case"))
    outcome, detail = runner.run(case)
    assert outcome in GOOD, f"{command} with {case.mutation}: {outcome}\n{detail}"

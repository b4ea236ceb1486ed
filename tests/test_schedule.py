"""Sigma schedules: REFERENCE.md golden tables, the formula in float64 and bit-equality with diffusers' scheduler."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from bounds import EPS32
from llm_dit.errors import LlmDitError
from llm_dit.generation.schedule import check_schedule, dit_timestep, explicit_sigmas, resolve_sigmas, shifted_sigmas

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

# shift * s / (1 + (shift - 1) * s) in float32, relative to its float64 value: s (a linspace value) rounded once
# (eps), 4 float32 operations (eps / 2 each); for shift >= 1 the formula's condition in s is <= 1.
SIGMA_REL_ERROR = 3 * EPS32

TURBO_8 = [1, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0]
TURBO_9 = [1, 0.96, 0.913044, 0.857143, 0.789474, 0.705882, 0.6, 0.461538, 0.272727, 0]


@pytest.mark.parametrize(("steps", "golden"), [(8, TURBO_8), (9, TURBO_9)])
def test_golden_tables(steps, golden):
    sigmas = shifted_sigmas(steps, 3.0)
    assert len(sigmas) == steps + 1
    # the tables have 6 decimals (+-5e-7); sigmas <= 1 carry SIGMA_REL_ERROR
    assert sigmas.tolist() == pytest.approx(golden, abs=5e-7 + SIGMA_REL_ERROR)


@pytest.mark.parametrize(("steps", "shift"), [(1, 3.0), (2, 1.0), (8, 3.0), (9, 3.0), (13, 1.7), (30, 6.0), (50, 12.0)])
def test_shifted_sigmas_follow_the_formula_in_float64(steps, shift):
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float64)
    exact = shift * s / (1 + (shift - 1) * s)
    got = shifted_sigmas(steps, shift)
    assert got.dtype == torch.float32 and got[-1] == 0.0
    assert ((got[:-1].double() - exact).abs() / exact).max() <= SIGMA_REL_ERROR


@pytest.mark.parametrize(("steps", "shift"), [(1, 3.0), (4, 1.0), (8, 3.0), (9, 3.0), (13, 1.7), (30, 6.0)])
def test_bit_identical_to_diffusers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist(), mu=0.0)
    assert torch.equal(scheduler.sigmas, shifted_sigmas(steps, shift))
    # The DiT's time input, exactly as ZImagePipeline computes it from the scheduler's timesteps.
    expected_t = (1000 - scheduler.timesteps) / 1000
    assert torch.equal(dit_timestep(scheduler.sigmas[:-1]), expected_t)


def test_shift_one_is_linear():
    assert shifted_sigmas(4, 1.0).tolist() == [1, 0.75, 0.5, 0.25, 0]  # every operation exact in binary


def float32(*values: float) -> list[float]:
    return torch.tensor(values, dtype=torch.float32).tolist()


def test_explicit_sigmas_are_used_verbatim():
    # verbatim: the values rounded to float32 once, nothing computed
    assert explicit_sigmas([1.0, 0.5, 0.2]).tolist() == float32(1.0, 0.5, 0.2, 0.0)
    assert explicit_sigmas([1.0, 0.5, 0.0]).tolist() == float32(1.0, 0.5, 0.0)
    assert resolve_sigmas(8, 3.0, [0.9, 0.1]).tolist() == float32(0.9, 0.1, 0.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "at least one"), ([0.5, 0.7], "strictly decreasing"), ([1.5, 0.5], r"\(0, 1\]"), ([0.0], "at least")],
)
def test_bad_explicit_sigmas(values, message):
    with pytest.raises(LlmDitError, match=message):
        explicit_sigmas(values)


@pytest.mark.parametrize(("steps", "shift"), [(0, 3.0), (-1, 3.0), (8, 0.0), (8, -1.0), (8, float("nan"))])
def test_bad_steps_or_shift(steps, shift):
    with pytest.raises(LlmDitError):
        shifted_sigmas(steps, shift)


CASES = [
    (8, 3.0, None),
    (1, 1.0, None),
    (30, 6.0, None),
    (0, 3.0, None),
    (-1, 3.0, None),
    (8, 0.0, None),
    (8, -1.0, None),
    (8, float("nan"), None),
    (8, float("inf"), None),
    (8, None, None),
    (2.0, 3.0, None),
    (8, None, [0.9, 0.5, 0.1]),
    (8, 3.0, [1.0, 0.5, 0.0]),
    (8, 3.0, []),
    (8, 3.0, [0.5, 0.7]),
    (8, 3.0, [1.5, 0.5]),
    (8, 3.0, [0.0]),
    (8, 3.0, [0.5, float("nan")]),
]


@pytest.mark.parametrize(("steps", "shift", "sigmas"), CASES)
def test_check_schedule_accepts_and_refuses_what_resolve_sigmas_does(steps, shift, sigmas):
    """The light check (no torch) is the builder's own validation: same outcome, same message, and the count of
    DiT forwards equals the built schedule's length minus its final 0."""
    try:
        built = resolve_sigmas(steps, shift, sigmas)
    except LlmDitError as exc:
        with pytest.raises(LlmDitError) as caught:
            check_schedule(steps, shift, sigmas)
        assert str(caught.value) == str(exc)
    else:
        assert check_schedule(steps, shift, sigmas) == len(built) - 1


def test_schedule_checks_import_no_torch():
    import subprocess
    import sys

    from cli_helpers import subprocess_env

    code = (
        "import sys\nfrom llm_dit.generation.schedule import check_schedule\n"
        "assert check_schedule(8, 3.0) == 8 and check_schedule(8, None, [0.5, 0.2]) == 2\n"
        "print([m for m in ('torch', 'numpy') if m in sys.modules])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert done.stdout.strip() == "[]", done.stdout + done.stderr

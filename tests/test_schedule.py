"""Sigma schedules: REFERENCE.md golden tables and bit-equality with diffusers' scheduler."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from llm_dit.errors import LlmDitError
from llm_dit.generation.schedule import dit_timestep, explicit_sigmas, resolve_sigmas, shifted_sigmas

TURBO_8 = [1, 0.954545, 0.9, 0.833333, 0.75, 0.642857, 0.5, 0.3, 0]
TURBO_9 = [1, 0.96, 0.913044, 0.857143, 0.789474, 0.705882, 0.6, 0.461538, 0.272727, 0]


@pytest.mark.parametrize(("steps", "golden"), [(8, TURBO_8), (9, TURBO_9)])
def test_golden_tables(steps, golden):
    sigmas = shifted_sigmas(steps, 3.0)
    assert len(sigmas) == steps + 1
    assert sigmas.tolist() == pytest.approx(golden, abs=1e-6)


@pytest.mark.parametrize(("steps", "shift"), [(1, 3.0), (4, 1.0), (8, 3.0), (9, 3.0), (13, 1.7), (30, 6.0)])
def test_bit_identical_to_diffusers(steps, shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    scheduler.set_timesteps(sigmas=torch.linspace(1.0, 1 / steps, steps).tolist(), mu=0.0)
    assert torch.equal(scheduler.sigmas, shifted_sigmas(steps, shift))
    # The DiT's time input, exactly as ZImagePipeline computes it from the scheduler's timesteps.
    expected_t = (1000 - scheduler.timesteps) / 1000
    assert torch.equal(dit_timestep(scheduler.sigmas[:-1]), expected_t)


def test_shift_one_is_linear():
    assert shifted_sigmas(4, 1.0).tolist() == pytest.approx([1, 0.75, 0.5, 0.25, 0])


def test_explicit_sigmas_are_used_verbatim():
    assert explicit_sigmas([1.0, 0.5, 0.2]).tolist() == pytest.approx([1.0, 0.5, 0.2, 0.0])
    assert explicit_sigmas([1.0, 0.5, 0.0]).tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert resolve_sigmas(8, 3.0, [0.9, 0.1]).tolist() == pytest.approx([0.9, 0.1, 0.0])


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

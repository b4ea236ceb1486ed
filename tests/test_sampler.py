"""The denoising loop (sampler.py) against the DiT called directly.

Expectations come from torch and diffusers' ZImageTransformer2DModel themselves: seeded ``torch.randn`` for the
noise, forward hooks for the refiner layer counts, the DiT's own output for one Euler step, and runs of the same
loop one sample at a time for per-sample schedules and guidance.
"""

from __future__ import annotations

import pytest
import torch

from llm_dit.errors import LlmDitError
from llm_dit.generation.sampler import context_refiner_mode, denoise, initial_noise
from llm_dit.generation.schedule import resolve_sigmas
from llm_dit.models import checkpoint

CHANNELS = 16
LATENT = 8  # 64x64 pixels / 8
CAP_DIM = 32  # tiny checkpoint's cap_feat_dim


@pytest.fixture(scope="module")
def transformer(tiny_checkpoint):
    return checkpoint.load_transformer(tiny_checkpoint, "cpu", torch.float32)


def captions(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, CAP_DIM, generator=gen) for n in lengths]


def noise(*seeds: int) -> torch.Tensor:
    return torch.cat(
        [torch.randn((1, CHANNELS, LATENT, LATENT), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def assert_rel_close(got: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> None:
    """max |got - expected| <= tol * max |expected|: batching changes fp32 GEMM rounding (~3e-6 relative here)."""
    assert got.shape == expected.shape
    err = (got - expected).abs().max().item()
    scale = expected.abs().max().item()
    assert err <= tol * scale, f"max abs error {err:.3g} > {tol:g} * {scale:.3g}"


def dit_out(transformer, latents: torch.Tensor, sigma: float, caps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The DiT's raw output per sample, called as diffusers calls it (t = 1 - sigma)."""
    t = torch.full((latents.shape[0],), 1.0 - sigma)
    with torch.no_grad():
        out = transformer(list(latents.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
    return [o.squeeze(1) for o in out]


# -- noise ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(8, 8), (6, 10)])
def test_initial_noise_matches_seeded_randn(h, w):
    for seed in (0, 7, 2**40 + 3):
        expected = torch.randn((1, 16, h, w), generator=torch.Generator("cpu").manual_seed(seed))
        got = initial_noise([seed], 16, h, w, "cpu")
        assert got.dtype == torch.float32
        assert torch.equal(got, expected)


def test_initial_noise_batch_is_position_independent():
    seeds = [5, 11, 5, 123]
    expected = torch.cat(
        [torch.randn((1, 16, 6, 4), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds], dim=0
    )
    got = initial_noise(seeds, 16, 6, 4, "cpu")
    assert torch.equal(got, expected)
    assert torch.equal(got[0], got[2])  # same seed, different position
    assert not torch.equal(got[0], got[1])
    assert torch.equal(initial_noise(seeds[::-1], 16, 6, 4, "cpu"), expected.flip(0))


# -- context refiner ablation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "calls"), [("default", 2), ("skip", 0), ("single", 1), ("double", 4)])
def test_refiner_mode_changes_layer_calls(transformer, mode, calls):
    layers = list(transformer.context_refiner)
    assert len(layers) == 2
    counts = {"refiner": 0, "dit": 0, "per_layer": [0, 0]}

    def layer_hook(index):
        def hook(module, args, output):
            counts["refiner"] += 1
            counts["per_layer"][index] += 1

        return hook

    def dit_hook(module, args, output):
        counts["dit"] += 1

    handles = [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(layers)]
    handles.append(transformer.register_forward_hook(dit_hook))
    try:
        x = noise(1)
        with context_refiner_mode(transformer, mode):
            dit_out(transformer, x, 0.7, captions(20))
            dit_out(transformer, x, 0.4, captions(20))
    finally:
        for h in handles:
            h.remove()
    assert counts["dit"] == 2
    assert counts["refiner"] == calls * counts["dit"]
    expected_per_layer = {"default": [2, 2], "skip": [0, 0], "single": [2, 0], "double": [4, 4]}[mode]
    assert counts["per_layer"] == expected_per_layer


def test_refiner_modes_change_the_output(transformer):
    x, caps = noise(3), captions(24)
    outputs = {}
    for mode in ("default", "skip", "single", "double"):
        with context_refiner_mode(transformer, mode):
            outputs[mode] = dit_out(transformer, x, 0.6, caps)[0]
    plain = dit_out(transformer, x, 0.6, caps)[0]
    assert torch.equal(outputs["default"], plain)
    for mode in ("skip", "single", "double"):
        assert (outputs[mode] - plain).abs().max() > 1e-3, mode
    assert (outputs["skip"] - outputs["single"]).abs().max() > 1e-3
    assert (outputs["single"] - outputs["double"]).abs().max() > 1e-3


def test_refiner_mode_restores_original_module_list(transformer):
    original = transformer.context_refiner
    layers = list(original)
    with context_refiner_mode(transformer, "double"):
        assert transformer.context_refiner is not original
        assert len(transformer.context_refiner) == 4
    assert transformer.context_refiner is original
    assert list(transformer.context_refiner) == layers

    with pytest.raises(RuntimeError, match="boom"), context_refiner_mode(transformer, "skip"):
        assert len(transformer.context_refiner) == 0
        raise RuntimeError("boom")
    assert transformer.context_refiner is original
    assert list(transformer.context_refiner) == layers


def test_unknown_refiner_mode_lists_valid_ones(transformer):
    original = transformer.context_refiner
    with pytest.raises(LlmDitError) as excinfo, context_refiner_mode(transformer, "triple"):
        pass
    message = str(excinfo.value)
    assert "triple" in message
    for mode in ("default", "skip", "single", "double"):
        assert mode in message
    assert transformer.context_refiner is original


# -- denoise --------------------------------------------------------------------------------------------------


def test_one_euler_step_is_x_plus_negated_dit_output(transformer):
    x = noise(4, 9)
    caps = captions(13, 40)
    sigmas = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    got = denoise(transformer, x.clone(), sigmas, caps, [None, None], [0.0, 0.0])
    out = torch.stack(dit_out(transformer, x, 1.0, caps))
    velocity = -out  # Z-Image's DiT predicts the negated velocity
    expected = x + (0.0 - 1.0) * velocity  # = x - v
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert (got - x).abs().max() > 1e-2  # the step did something


def test_two_steps_follow_euler_with_direct_dit_calls(transformer):
    x = noise(21)
    caps = captions(17)
    sigmas = resolve_sigmas(2, 3.0)
    got = denoise(transformer, x.clone(), sigmas[None], caps, [None], [0.0])
    expected = x.clone()
    for i in range(2):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        out = dit_out(transformer, expected, s, caps)[0][None]
        expected = expected + (s_next - s) * (-out)
    assert_rel_close(got, expected)


def test_per_sample_sigmas_batch_equals_single_runs(transformer):
    x = noise(1, 2)
    caps = captions(10, 45, seed=3)
    sig_a, sig_b = resolve_sigmas(3, 3.0), resolve_sigmas(3, 1.0)
    assert not torch.equal(sig_a, sig_b)
    batch = denoise(transformer, x.clone(), torch.stack([sig_a, sig_b]), caps, [None, None], [0.0, 0.0])
    alone_a = denoise(transformer, x[:1].clone(), sig_a[None], caps[:1], [None], [0.0])
    alone_b = denoise(transformer, x[1:].clone(), sig_b[None], caps[1:], [None], [0.0])
    assert_rel_close(batch[0:1], alone_a)
    assert_rel_close(batch[1:2], alone_b)
    # The shift mattered: the same sample under the other schedule is different.
    other = denoise(transformer, x[:1].clone(), sig_b[None], caps[:1], [None], [0.0])
    assert (other - alone_a).abs().max() > 1e-3


def test_cfg_applies_only_where_guidance_is_positive(transformer):
    x = noise(5, 6)
    pos = captions(12, 30, seed=4)
    neg = captions(8, 8, seed=5)
    sig = resolve_sigmas(2, 3.0)
    sigmas = torch.stack([sig, sig])
    batch = denoise(transformer, x.clone(), sigmas, pos, [None, neg[1]], [0.0, 3.0])
    alone_plain = denoise(transformer, x[:1].clone(), sig[None], pos[:1], [None], [0.0])
    alone_cfg = denoise(transformer, x[1:].clone(), sig[None], pos[1:], [neg[1]], [3.0])
    assert_rel_close(batch[0:1], alone_plain)
    assert_rel_close(batch[1:2], alone_cfg)
    # A negative given with guidance 0 is ignored.
    ignored = denoise(transformer, x[:1].clone(), sig[None], pos[:1], [neg[0]], [0.0])
    torch.testing.assert_close(ignored, alone_plain, rtol=1e-6, atol=1e-6)
    # CFG really changes the result.
    no_cfg = denoise(transformer, x[1:].clone(), sig[None], pos[1:], [None], [0.0])
    assert (no_cfg - alone_cfg).abs().max() > 1e-3


def test_cfg_formula_single_step(transformer):
    x = noise(8)
    pos, neg = captions(15, 9, seed=6)
    g = 2.5
    got = denoise(transformer, x.clone(), torch.tensor([[1.0, 0.0]]), [pos], [neg], [g])
    out_pos = dit_out(transformer, x, 1.0, [pos])[0]
    out_neg = dit_out(transformer, x, 1.0, [neg])[0]
    pred = out_pos + g * (out_pos - out_neg)
    expected = x - (-pred)[None]
    assert_rel_close(got, expected)


def test_guidance_without_negative_raises(transformer):
    x = noise(1, 2)
    sig = resolve_sigmas(2, 3.0)
    with pytest.raises(LlmDitError, match="sample 1"):
        denoise(transformer, x, torch.stack([sig, sig]), captions(5, 5), [None, None], [0.0, 2.0])


def test_sigmas_shape_is_checked(transformer):
    x = noise(1, 2)
    with pytest.raises(LlmDitError, match="sigmas"):
        denoise(transformer, x, resolve_sigmas(2, 3.0)[None], captions(5, 5), [None, None], [0.0, 0.0])

"""The denoising loop (sampler.py) against the DiT called directly.

Expectations come from torch and diffusers' ZImageTransformer2DModel themselves: seeded ``torch.randn`` for the
noise, forward hooks for the refiner layer calls and for what each DiT forward receives, the DiT's own output for
one Euler step, and a float64 Euler loop written out here (one sample at a time, direct DiT calls) for
multi-step, per-sample schedules and guidance. Float32 results are compared with that float64 loop within the
rounding bound of tests/bounds.py (tolerance policy in tests/README.md).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from bounds import assert_bit_equal, assert_within_rounding, count_reductions, rounding_bound
from llm_dit.errors import LlmDitError
from llm_dit.generation.sampler import Guidance, context_refiner_mode, denoise, initial_noise
from llm_dit.generation.schedule import dit_timestep, resolve_sigmas
from llm_dit.models import checkpoint

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

CHANNELS = 16
LATENT = 8  # 64x64 pixels / 8
CAP_DIM = 32  # tiny checkpoint's cap_feat_dim


@pytest.fixture(scope="module")
def transformer(tiny_checkpoint):
    return checkpoint.load_transformer(tiny_checkpoint, "cpu", torch.float32)


@pytest.fixture(scope="module")
def transformer64(transformer):
    return copy.deepcopy(transformer).double()


def captions(*lengths: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, CAP_DIM, generator=gen) for n in lengths]


def noise(*seeds: int) -> torch.Tensor:
    return torch.cat(
        [torch.randn((1, CHANNELS, LATENT, LATENT), generator=torch.Generator().manual_seed(s)) for s in seeds]
    )


def dit_out(transformer, latents: torch.Tensor, sigma: float, caps: list[torch.Tensor]) -> list[torch.Tensor]:
    """The DiT's raw output per sample, called as diffusers calls it (t = 1 - sigma)."""
    t = torch.full((latents.shape[0],), 1.0 - sigma)
    with torch.no_grad():
        out = transformer(list(latents.unsqueeze(2).unbind(0)), t, caps, return_dict=False)[0]
    return [o.squeeze(1) for o in out]


def reference_denoise(
    transformer64: nn.Module,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    caption: torch.Tensor,
    negative: torch.Tensor | None = None,
    guidance: float = 0.0,
) -> tuple[torch.Tensor, float]:
    """One sample's Euler loop in float64, written from diffusers' ZImagePipeline: t = 1 - sigma, velocity
    v = -DiT(x) (CFG: pred = pos + g * (pos - neg)), x += (sigma_next - sigma) * v; one DiT call per branch.

    Returns the final latents ``[1, C, h, w]`` and the rounding factor of a float32 run of the same loop:
    the counted reductions (tests/bounds.py) times (1 + g), as CFG scales the positive branch's error by
    1 + g and the negative's by g (each branch's calls are counted once here).
    """
    x = latents.double()
    sig = sigmas.double()
    with count_reductions(transformer64) as counted, torch.no_grad():
        for i in range(len(sig) - 1):
            t = (1.0 - sig[i]).reshape(1)
            pred = transformer64([x[0].unsqueeze(1)], t, [caption.double()], return_dict=False)[0][0]
            if guidance > 0:
                assert negative is not None
                neg = transformer64([x[0].unsqueeze(1)], t, [negative.double()], return_dict=False)[0][0]
                pred = pred + guidance * (pred - neg)
            x = x + (sig[i + 1] - sig[i]) * (-pred.squeeze(1))[None]
    return x, counted.total * (1.0 + guidance)


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


# Turbo's context refiner has 2 layers, A = context_refiner[0] and B = context_refiner[1]; per DiT forward:
REFINER_ORDER = {"default": [0, 1], "skip": [], "single": [0], "double": [0, 1, 0, 1]}  # double: A, B, A, B


@pytest.mark.parametrize("mode", ["default", "skip", "single", "double"])
def test_refiner_mode_runs_the_layers_in_order(transformer, mode):
    layers = list(transformer.context_refiner)
    assert len(layers) == 2
    calls: list[object] = []  # refiner layer indices, and "dit" after each DiT forward

    def layer_hook(index):
        def hook(module, args, output):
            calls.append(index)

        return hook

    handles = [layer.register_forward_hook(layer_hook(i)) for i, layer in enumerate(layers)]
    handles.append(transformer.register_forward_hook(lambda module, args, output: calls.append("dit")))
    try:
        x = noise(1)
        with context_refiner_mode(transformer, mode):
            dit_out(transformer, x, 0.7, captions(20))
            dit_out(transformer, x, 0.4, captions(20))
    finally:
        for h in handles:
            h.remove()
    assert calls == 2 * [*REFINER_ORDER[mode], "dit"]


def test_refiner_modes_change_the_output(transformer):
    """Each mode's output is the DiT with exactly its layer list (bit-equal: the same computation), and the
    modes really differ: by more than twice the rounding bound of the larger forward (two float32 results
    closer than that could have the same exact value)."""
    a, b = transformer.context_refiner
    x, caps = noise(3), captions(24)
    outputs, factors = {}, {}
    for mode in ("default", "skip", "single", "double"):
        with context_refiner_mode(transformer, mode), count_reductions(transformer) as counted:
            outputs[mode] = dit_out(transformer, x, 0.6, caps)[0]
        factors[mode] = counted.total
    plain = dit_out(transformer, x, 0.6, caps)[0]
    assert_bit_equal(outputs["default"], plain)
    by_hand = {"default": [a, b], "skip": [], "single": [a], "double": [a, b, a, b]}
    original = transformer.context_refiner
    try:
        for mode, stack in by_hand.items():
            transformer.context_refiner = nn.ModuleList(stack)
            assert_bit_equal(outputs[mode], dit_out(transformer, x, 0.6, caps)[0])
        transformer.context_refiner = nn.ModuleList([a, a, b, b])  # the other order of "double"
        outputs["A,A,B,B"] = dit_out(transformer, x, 0.6, caps)[0]
    finally:
        transformer.context_refiner = original
    factors["A,A,B,B"] = factors["double"]
    modes = list(outputs)
    for i, m in enumerate(modes):
        for n in modes[i + 1 :]:
            scale = torch.maximum(outputs[m].abs().max(), outputs[n].abs().max())
            bound = 2 * rounding_bound(scale, max(factors[m], factors[n]))
            assert (outputs[m] - outputs[n]).abs().max() > bound, (m, n)


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
    # The same DiT call (same batch, t = 1 - 1 = 0 either way) and the same exact update (dt = -1): bit-equal.
    assert_bit_equal(got, expected)
    assert out.abs().max() > 0.1  # a vacuous (all-zero) DiT would make this test meaningless


def test_two_steps_follow_euler_with_direct_dit_calls(transformer, transformer64):
    x = noise(21)
    caps = captions(17)
    sigmas = resolve_sigmas(2, 3.0)
    got = denoise(transformer, x.clone(), sigmas[None], caps, [None], [0.0])
    expected, factor = reference_denoise(transformer64, x, sigmas, caps[0])
    assert_within_rounding(got, expected, factor)


def test_per_sample_sigmas_batch_equals_single_runs(transformer, transformer64):
    x = noise(1, 2)
    caps = captions(10, 45, seed=3)
    sig_a, sig_b = resolve_sigmas(3, 3.0), resolve_sigmas(3, 1.0)
    assert not torch.equal(sig_a, sig_b)
    batch = denoise(transformer, x.clone(), torch.stack([sig_a, sig_b]), caps, [None, None], [0.0, 0.0])
    alone_a = denoise(transformer, x[:1].clone(), sig_a[None], caps[:1], [None], [0.0])
    alone_b = denoise(transformer, x[1:].clone(), sig_b[None], caps[1:], [None], [0.0])
    ref_a, factor_a = reference_denoise(transformer64, x[:1], sig_a, caps[0])
    ref_b, factor_b = reference_denoise(transformer64, x[1:], sig_b, caps[1])
    # Batched and alone are different batch shapes: both within rounding of the float64 loop.
    for got, ref, factor in [(batch[0:1], ref_a, factor_a), (alone_a, ref_a, factor_a)]:
        assert_within_rounding(got, ref, factor)
    for got, ref, factor in [(batch[1:2], ref_b, factor_b), (alone_b, ref_b, factor_b)]:
        assert_within_rounding(got, ref, factor)
    # The shift mattered: in float64, sample 0 under the other schedule lands farther away than 10 bounds, so
    # a batch that used one sample's sigmas for another would fail the comparisons above.
    other, _ = reference_denoise(transformer64, x[:1], sig_b, caps[0])
    assert (other - ref_a).abs().max() > 10 * rounding_bound(ref_a, factor_a)


def test_cfg_applies_only_where_guidance_is_positive(transformer, transformer64):
    x = noise(5, 6)
    pos = captions(12, 30, seed=4)
    neg = captions(8, 8, seed=5)
    sig = resolve_sigmas(2, 3.0)
    sigmas = torch.stack([sig, sig])
    batch = denoise(transformer, x.clone(), sigmas, pos, [None, neg[1]], [0.0, 3.0])
    alone_plain = denoise(transformer, x[:1].clone(), sig[None], pos[:1], [None], [0.0])
    alone_cfg = denoise(transformer, x[1:].clone(), sig[None], pos[1:], [neg[1]], [3.0])
    ref_plain, factor_plain = reference_denoise(transformer64, x[:1], sig, pos[0])
    ref_cfg, factor_cfg = reference_denoise(transformer64, x[1:], sig, pos[1], neg[1], 3.0)
    # Batched (2 positives + 1 negative in one forward) and alone are different batch shapes: both are
    # compared with the float64 loop, never with each other bit for bit.
    assert_within_rounding(batch[0:1], ref_plain, factor_plain)
    assert_within_rounding(alone_plain, ref_plain, factor_plain)
    assert_within_rounding(batch[1:2], ref_cfg, factor_cfg)
    assert_within_rounding(alone_cfg, ref_cfg, factor_cfg)
    # A negative given with guidance 0 is ignored: the DiT sees exactly the calls of alone_plain.
    ignored = denoise(transformer, x[:1].clone(), sig[None], pos[:1], [neg[0]], [0.0])
    assert_bit_equal(ignored, alone_plain)
    # CFG really changes the result: in float64, by more than 10 bounds of the CFG comparison.
    no_cfg, _ = reference_denoise(transformer64, x[1:], sig, pos[1])
    assert (no_cfg - ref_cfg).abs().max() > 10 * rounding_bound(ref_cfg, factor_cfg)


def test_cfg_negatives_use_their_own_latent_and_time(transformer, transformer64):
    """Each DiT forward gets B positives then one negative per sample with guidance > 0, in sample order; a
    negative carries its own sample's latent, time and negative caption (checked exactly on every forward)."""
    x = noise(31, 32, 33)
    pos = captions(12, 20, 9, seed=7)
    neg = captions(8, 14, 5, seed=8)
    guidance = [2.0, 0.0, 1.5]
    sigmas = torch.stack([resolve_sigmas(2, 3.0), resolve_sigmas(2, 1.0), resolve_sigmas(2, 2.0)])
    seen = []

    def record(module, args, kwargs):
        seen.append((list(args[0]), args[1].clone(), list(args[2])))

    handle = transformer.register_forward_pre_hook(record, with_kwargs=True)
    try:
        got = denoise(transformer, x.clone(), sigmas, pos, [neg[0], None, neg[2]], guidance)
    finally:
        handle.remove()
    assert len(seen) == 2  # one forward per step
    for step, (lat, t, caps) in enumerate(seen):
        assert len(lat) == len(t) == len(caps) == 3 + 2
        if step == 0:
            for j in range(3):
                assert torch.equal(lat[j], x[j].unsqueeze(1))
        for k, j in enumerate([0, 2]):  # the samples with guidance > 0
            assert_bit_equal(lat[3 + k], lat[j])  # the negative of sample j carries sample j's latent
            assert t[3 + k] == t[j]
            assert torch.equal(caps[3 + k], neg[j]) and torch.equal(caps[j], pos[j])
    for j in range(3):
        ref, factor = reference_denoise(transformer64, x[j : j + 1], sigmas[j], pos[j], neg[j], guidance[j])
        assert_within_rounding(got[j : j + 1], ref, factor)


def test_cfg_formula_single_step(transformer, transformer64):
    x = noise(8)
    pos, neg = captions(15, 9, seed=6)
    g = 2.5
    sigmas = torch.tensor([1.0, 0.0])
    got = denoise(transformer, x.clone(), sigmas[None], [pos], [neg], [g])
    expected, factor = reference_denoise(transformer64, x, sigmas, pos, neg, g)
    assert_within_rounding(got, expected, factor)


def test_guidance_without_negative_raises(transformer):
    x = noise(1, 2)
    sig = resolve_sigmas(2, 3.0)
    with pytest.raises(LlmDitError, match="sample 1"):
        denoise(transformer, x, torch.stack([sig, sig]), captions(5, 5), [None, None], [0.0, 2.0])


def test_sigmas_shape_is_checked(transformer):
    x = noise(1, 2)
    with pytest.raises(LlmDitError, match="sigmas"):
        denoise(transformer, x, resolve_sigmas(2, 3.0)[None], captions(5, 5), [None, None], [0.0, 0.0])


# -- diffusers' CFG refinements (Guidance) ---------------------------------------------------------------------


def test_guidance_combine_by_hand():
    """pred = pos + g (pos - neg); with normalization, rescaled to |pos| only when it is longer (hand-computed:
    pos = (3, 4), |pos| = 5)."""
    pos, neg = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])
    assert torch.equal(Guidance(2.0).combine(pos, neg), torch.tensor([7.0, 8.0]))  # 3 + 2*2, 4 + 2*2
    # |(7, 8)| = sqrt(113) > 5: scaled by 5 / sqrt(113), so its norm is |pos| (to float32 rounding of 3 ops).
    capped = Guidance(2.0, normalization=True).combine(pos, neg)
    expected = torch.tensor([7.0, 8.0], dtype=torch.float64) * 5 / 113**0.5
    assert_within_rounding(capped, expected, 8)
    # Shorter than pos: left exactly as is. neg = 1.5 pos gives pred = pos - 0.5 g pos = 0.5 pos at g = 1.
    short = Guidance(1.0, normalization=True).combine(pos, 1.5 * pos)
    assert torch.equal(short, torch.tensor([1.5, 2.0]))


@pytest.mark.parametrize(
    ("scale", "truncation", "t", "applies"),
    [
        (2.0, 1.0, 0.99, True),
        (2.0, 0.5, 0.5, True),  # diffusers drops CFG where t > cfg_truncation: at equality it still applies
        (2.0, 0.5, 0.5000001, False),
        (2.0, 0.0, 0.0, True),  # the first step (sigma 1, t 0) keeps CFG even at truncation 0
        (0.0, 1.0, 0.0, False),
    ],
)
def test_guidance_applies_until_truncation(scale, truncation, t, applies):
    assert Guidance(scale, truncation=truncation).applies(t) is applies


def test_truncated_cfg_leaves_the_forward(transformer):
    """A sample whose DiT time passed its cfg_truncation runs that step without its negative (as diffusers
    does), while a batch-mate keeps CFG: the forwards' sizes show which samples were guided."""
    x = noise(41, 42)
    pos, neg = captions(12, 20, seed=9), captions(8, 14, seed=10)
    sigmas = torch.stack([resolve_sigmas(4, 3.0), resolve_sigmas(4, 3.0)])
    times = dit_timestep(sigmas[0, :4]).tolist()  # 0, 0.1, 0.25, 0.5 (4 steps at shift 3)
    assert times[1] <= 0.2 < times[2]
    sizes = []
    handle = transformer.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    try:
        denoise(transformer, x, sigmas, pos, neg, [Guidance(2.0, truncation=0.2), Guidance(2.0)])
    finally:
        handle.remove()
    assert sizes == [4, 4, 3, 3]  # 2 positives + both negatives, then only sample 1's negative

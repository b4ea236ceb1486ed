"""The core test: llm-dit's default generation equals diffusers' ZImagePipeline on the same tiny checkpoint.

Same checkpoint, prompts, seeds (one CPU generator per sample), steps and shift (set on the diffusers
scheduler); with and without CFG; batched and one at a time. With the default encoder padding (like diffusers,
at least 512 tokens) the images are bit-identical; padding to the longest prompt, or batching prompts of different
lengths, differs by rounding only: there, both sides are compared with a float64 copy of the pipeline within the
rounding bound of tests/bounds.py. A real mismatch (a wrong seed, prompt or sigma schedule) moves pixels by more
than 10 bounds, even under the loosest bound here (test_longest_padding_matches_to_rounding: 6 steps with CFG 3.5),
as the test_the_comparison_can_fail tests check. A small error of a parameter moves them by less: guidance 3.4 for
3.5 by about 7 of those bounds, still more than the one bound a comparison allows.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

from bounds import (
    assert_bit_equal,
    assert_differ,
    assert_within_rounding,
    count_reductions,
    float64_pipeline,
    generate_counted,
    rounding_bound,
)
from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

PROMPTS = [
    "A tabby cat sleeping on a sunlit windowsill",
    "一只猫 in a neon-lit Tokyo alley, rain, 35mm photo",
    "Abstract geometric patterns in blue and gold\nwith a second line",
]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    pipe = ZImagePipeline.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    return LlmDitPipeline.from_pretrained(
        tiny_checkpoint,
        encoder={"device": "cpu", "torch_dtype": "float32"},
        pipeline={"device": "cpu", "torch_dtype": "float32"},
    )


@pytest.fixture(scope="module")
def ours64(ours):
    return float64_pipeline(ours)


def run_reference(pipe, prompts, seeds, *, width, height, steps, shift, guidance=0.0, negative=None, **cfg):
    base = pipe.scheduler.config
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(base, shift=shift)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs = dict(cfg)  # cfg_normalization, cfg_truncation: diffusers' names, as ours
    if negative is not None:
        kwargs["negative_prompt"] = [negative] * len(prompts)
    out = pipe(
        list(prompts),  # diffusers rewrites the caller's prompt list in place
        width=width,
        height=height,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators if len(generators) > 1 else generators[0],
        output_type="pt",
        **kwargs,
    )
    return out.images


def run_ours(pipe, prompts, seeds, *, width, height, steps, shift, guidance=0.0, negative=None, **cfg):
    requests = [
        GenerationRequest.build(
            p,
            seed=s,
            width=width,
            height=height,
            steps=steps,
            shift=shift,
            guidance_scale=guidance,
            negative_prompt=negative or "",
            **cfg,
        )
        for p, s in zip(prompts, seeds, strict=True)
    ]
    return torch.stack([r.image for r in pipe.generate_batch(requests)])


CASES = [
    # prompts, seeds, width, height, steps, shift, guidance, negative
    pytest.param(PROMPTS[:1], [0], 64, 64, 8, 3.0, 0.0, None, id="official-recipe"),
    pytest.param(PROMPTS[1:2], [1234], 96, 64, 4, 1.5, 0.0, None, id="wide-4steps-shift1.5"),
    pytest.param(PROMPTS[2:3], [7], 64, 112, 9, 5.0, 0.0, None, id="tall-9steps-shift5"),
    pytest.param(PROMPTS[:1], [42], 64, 64, 6, 3.0, 3.5, None, id="cfg-empty-negative"),
    pytest.param(PROMPTS[:1], [42], 80, 64, 5, 2.0, 2.0, "blurry, low quality", id="cfg-negative"),
    pytest.param(PROMPTS, [3, 4, 5], 64, 64, 8, 3.0, 0.0, None, id="batched"),
    pytest.param(PROMPTS[:2], [11, 12], 64, 64, 3, 3.0, 1.5, "ugly", id="batched-cfg"),
]


@pytest.mark.parametrize(("prompts", "seeds", "width", "height", "steps", "shift", "guidance", "negative"), CASES)
def test_matches_diffusers(reference, ours, prompts, seeds, width, height, steps, shift, guidance, negative):
    kw = dict(width=width, height=height, steps=steps, shift=shift, guidance=guidance, negative=negative)
    expected = run_reference(reference, prompts, seeds, **kw)
    actual = run_ours(ours, prompts, seeds, **kw)
    assert actual.shape == expected.shape == (len(prompts), 3, height, width)
    diff = (actual - expected).abs().max().item()
    assert torch.equal(actual, expected), f"max |llm-dit - diffusers| = {diff}"


def test_longest_padding_matches_to_rounding(reference, ours, ours64):
    """padding="longest" (faster) changes only the encoder's rounding: it and diffusers' images are both within
    rounding of the float64 pipeline (6 steps with CFG 3.5: the bound is large, 1 + 2g = 8 times the
    conditioning's)."""
    kw = dict(width=64, height=64, steps=6, shift=3.0, guidance=3.5, negative="blurry")
    expected = run_reference(reference, PROMPTS[:2], [1, 2], **kw)
    requests = [
        GenerationRequest.build(
            p, seed=s, width=64, height=64, steps=6, guidance_scale=3.5, negative_prompt="blurry", padding="longest"
        )
        for p, s in zip(PROMPTS[:2], [1, 2], strict=True)
    ]
    actual = torch.stack([r.image for r in ours.generate_batch(requests)])
    for i, request in enumerate(requests):
        exact, factor = generate_counted(ours64, request)
        assert_within_rounding(actual[i], exact.image, factor)
        assert_within_rounding(expected[i], exact.image, factor)


@pytest.mark.parametrize(("steps", "shift", "guidance"), [(8, 3.0, 0.0), (5, 1.5, 4.0), (3, 6.0, 1.0)])
def test_loop_is_bit_identical_given_the_same_embeddings(reference, ours, steps, shift, guidance):
    """With the same caption features, our loop reproduces diffusers' exactly (not just to rounding)."""
    positive, negative = ours.encoder.encode([PROMPTS[0], "blurry"])
    reference.scheduler = FlowMatchEulerDiscreteScheduler.from_config(reference.scheduler.config, shift=shift)
    expected = reference(
        prompt_embeds=[positive.embeddings],
        negative_prompt_embeds=[negative.embeddings],
        width=64,
        height=80,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=torch.Generator("cpu").manual_seed(9),
        output_type="pt",
    ).images[0]
    actual = ours.generate(
        embeddings=positive.embeddings,
        negative_embeddings=negative.embeddings,
        width=64,
        height=80,
        steps=steps,
        shift=shift,
        guidance_scale=guidance,
        seed=9,
    ).image
    assert torch.equal(actual, expected)


def test_encoder_matches_diffusers_encode_prompt(reference, ours, ours64):
    """Default padding (like diffusers, >= 512 tokens) gives bit-identical caption features."""
    expected = reference.encode_prompt(list(PROMPTS), device="cpu", do_classifier_free_guidance=False)[0]
    for exp, act in zip(expected, ours.encoder.encode(PROMPTS), strict=True):
        assert torch.equal(act.embeddings, exp)
    # Padding to the longest prompt keeps the same rows, equal up to rounding: diffusers' and ours both within
    # rounding of the float64 encoder (its reductions counted on its forward, padded to the longest prompt only).
    with count_reductions(ours64.encoder.model) as counted:
        exact = ours64.encoder.encode(PROMPTS, padding="longest")
    for exp, act, ref in zip(expected, ours.encoder.encode(PROMPTS, padding="longest"), exact, strict=True):
        assert act.embeddings.shape == exp.shape
        assert_within_rounding(act.embeddings, ref.embeddings, counted.total)
        assert_within_rounding(exp, ref.embeddings, counted.total)


def test_batched_equals_one_at_a_time(reference, ours, ours64):
    """A mixed batch (different prompts, seeds and shifts in one forward) equals separate diffusers runs, to
    rounding: one forward over captions of different lengths pads and masks them. Both are compared with the
    float64 pipeline."""
    specs = [(PROMPTS[0], 5, 3.0), (PROMPTS[1], 6, 1.0), (PROMPTS[2], 7, 6.0)]
    requests = [GenerationRequest.build(p, seed=s, shift=sh, width=64, height=64, steps=4) for p, s, sh in specs]
    results = ours.generate_batch(requests)
    assert {r.record["batch_size"] for r in results} == {3}  # really one batched forward per step
    for result, request, (prompt, seed, shift) in zip(results, requests, specs, strict=True):
        expected = run_reference(reference, [prompt], [seed], width=64, height=64, steps=4, shift=shift)[0]
        exact, factor = generate_counted(ours64, request)
        assert_within_rounding(result.image, exact.image, factor)
        assert_within_rounding(expected, exact.image, factor)


def test_the_comparison_can_fail(reference, ours):
    """Guard against a vacuous model: a different seed, prompt or shift changes the image by more than 10
    rounding bounds of such a run, so the rounding comparisons above would catch it."""
    kw = dict(width=64, height=64, steps=4, shift=3.0)
    base = run_reference(reference, PROMPTS[:1], [0], **kw)
    requests = [GenerationRequest.build(p, seed=0, width=64, height=64, steps=4) for p in PROMPTS[:2]]
    factor = max(generate_counted(ours, request)[1] for request in requests)
    margin = 10 * rounding_bound(torch.ones(1), factor)  # images lie in [0, 1]
    assert (run_ours(ours, PROMPTS[:1], [1], **kw) - base).abs().max() > margin
    assert (run_ours(ours, PROMPTS[1:2], [0], **kw) - base).abs().max() > margin
    assert (run_ours(ours, PROMPTS[:1], [0], **{**kw, "shift": 2.0}) - base).abs().max() > margin


def test_the_comparison_can_fail_under_the_loosest_bound(ours):
    """The same guard for the loosest bound above, test_longest_padding_matches_to_rounding's (6 steps with CFG
    3.5, its own factor counted on the run): a different seed, prompt or shift (sigmas) moves the image by more
    than 10 of those bounds (measured: 18, 14 and 16)."""

    def request(prompt: str, seed: int, shift: float = 3.0) -> GenerationRequest:
        return GenerationRequest.build(
            prompt,
            seed=seed,
            width=64,
            height=64,
            steps=6,
            shift=shift,
            guidance_scale=3.5,
            negative_prompt="blurry",
            padding="longest",
        )

    base, factor = generate_counted(ours, request(PROMPTS[0], 1))
    factor = max(factor, generate_counted(ours, request(PROMPTS[1], 1))[1])
    margin = 10 * rounding_bound(torch.ones(1), factor)  # images lie in [0, 1]
    for other in (request(PROMPTS[0], 2), request(PROMPTS[1], 1), request(PROMPTS[0], 1, shift=2.9)):
        (result,) = ours.generate_batch([other])
        assert (result.image - base.image).abs().max() > margin, other


# -- diffusers' CFG refinements: cfg_normalization, cfg_truncation ---------------------------------------------

CFG_CASES = [
    # prompts, seeds, steps, guidance, negative, cfg_normalization, cfg_truncation
    pytest.param(PROMPTS[:1], [42], 6, 3.5, None, True, 1.0, id="normalization"),
    pytest.param(PROMPTS[:1], [42], 6, 3.5, None, False, 0.5, id="truncation-0.5"),
    pytest.param(PROMPTS[1:2], [7], 5, 2.0, "blurry", True, 0.8, id="both-negative"),
    pytest.param(PROMPTS[:1], [3], 4, 4.0, None, False, 0.0, id="truncation-0-first-step-only"),
    pytest.param(PROMPTS[:2], [11, 12], 3, 1.5, "ugly", True, 0.4, id="batched-both"),
]


CFG_NAMES = ("prompts", "seeds", "steps", "guidance", "negative", "normalization", "truncation")


@pytest.mark.parametrize(CFG_NAMES, CFG_CASES)
def test_cfg_refinements_match_diffusers(
    reference, ours, prompts, seeds, steps, guidance, negative, normalization, truncation
):
    """cfg_normalization and cfg_truncation are diffusers' own: the same images bit for bit (same operations in
    the same order, CFG dropped from the forward at the same steps)."""
    kw = dict(width=64, height=64, steps=steps, shift=3.0, guidance=guidance, negative=negative)
    cfg = dict(cfg_normalization=normalization, cfg_truncation=truncation)
    expected = run_reference(reference, prompts, seeds, **kw, **cfg)
    actual = run_ours(ours, prompts, seeds, **kw, **cfg)
    diff = (actual - expected).abs().max().item()
    assert torch.equal(actual, expected), f"max |llm-dit - diffusers| = {diff}"


def _cfg_request(**cfg) -> GenerationRequest:
    return GenerationRequest.build(
        PROMPTS[0], seed=5, width=64, height=64, steps=6, guidance_scale=3.5, negative_prompt="blurry", **cfg
    )


def test_cfg_refinements_change_pixels_when_they_apply_and_only_then(ours):
    """Each option moves the image by more than twice the rounding bound of the runs compared (so a no-op
    implementation fails), and changes nothing, bit for bit, where it cannot apply: without CFG, or at its
    neutral value (normalization off, truncation 1)."""
    plain, factor = generate_counted(ours, _cfg_request())
    # The rescale adds, per step, two pairwise 2-norms over the latent (C x h x w) and one division.
    latent = 16 * (64 // 8) * (64 // 8)
    factor += 6 * (2 * math.ceil(math.log2(latent)) + 2)
    for option in ({"cfg_normalization": True}, {"cfg_truncation": 0.5}, {"cfg_truncation": 0.0}):
        changed, _ = generate_counted(ours, _cfg_request(**option))
        assert_differ(changed.image, plain.image, factor)

    (default,) = ours.generate_batch([_cfg_request()])
    (neutral,) = ours.generate_batch([_cfg_request(cfg_normalization=False, cfg_truncation=1.0)])
    assert_bit_equal(neutral.image, default.image)
    assert (neutral.record["cfg_normalization"], neutral.record["cfg_truncation"]) == (False, 1.0)

    no_cfg = dict(seed=5, width=64, height=64, steps=6)
    (off,) = ours.generate_batch([GenerationRequest.build(PROMPTS[0], **no_cfg)])
    (inert,) = ours.generate_batch(
        [GenerationRequest.build(PROMPTS[0], **no_cfg, cfg_normalization=True, cfg_truncation=0.3)]
    )
    assert_bit_equal(inert.image, off.image)
    assert (inert.record["cfg_normalization"], inert.record["cfg_truncation"]) == (None, None)  # inert: not claimed


# -- the checkpoint's scheduler shift -------------------------------------------------------------------------------


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def test_checkpoint_scheduler_shift_is_used_as_diffusers_uses_it(tiny_checkpoint, tmp_path):
    """A checkpoint whose scheduler_config.json says shift 5.0: with no shift set, llm-dit samples at 5.0 and
    makes diffusers' image bit for bit (ZImagePipeline reads the same file); an explicit shift still wins."""
    ck = tmp_path / "shift5"
    shutil.copytree(tiny_checkpoint, ck, copy_function=_link_or_copy)
    config_path = ck / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config_path.unlink()  # a hard link: never write through to the session's checkpoint
    config_path.write_text(json.dumps({**config, "shift": 5.0}))

    reference = ZImagePipeline.from_pretrained(ck, dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    assert reference.scheduler.config.shift == 5.0
    expected = reference(
        [PROMPTS[0]],
        width=64,
        height=64,
        num_inference_steps=4,
        guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(3),
        output_type="pt",
    ).images[0]
    pipe = LlmDitPipeline.from_pretrained(
        ck, encoder={"device": "cpu", "torch_dtype": "float32"}, pipeline={"device": "cpu", "torch_dtype": "float32"}
    )
    result = pipe.generate(PROMPTS[0], seed=3, width=64, height=64, steps=4)
    assert (result.record["shift"], result.record["shift_source"]) == (5.0, "checkpoint scheduler_config")
    assert torch.equal(result.image, expected)
    explicit = pipe.generate(PROMPTS[0], seed=3, width=64, height=64, steps=4, shift=2.0)
    assert (explicit.record["shift"], explicit.record["shift_source"]) == (2.0, "caller")
    assert explicit.record["sigmas"] != result.record["sigmas"]

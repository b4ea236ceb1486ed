"""Image-to-image equals diffusers' ZImageImg2ImgPipeline bit for bit on the tiny checkpoint.

Same checkpoint, init image, prompts, seeds (one CPU generator per sample: the VAE posterior sample draws from it
first, then the noise), strengths 0.3-1.0, steps and shift; with text prompts, with CFG, and with VL conditioning's
features given to both as caption embeddings. The comparison can fail: a wrong seed or a strength that starts one
step later moves pixels (test_the_img2img_comparison_can_fail).

Batched with one init image, diffusers encodes it once, with the first sample's generator, and repeats its latents:
an image would depend on its position in the batch. llm-dit keeps every image a function of its own seed, which is
what diffusers does given the image once per sample (test_img2img_matches_diffusers[batched]).
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageImg2ImgPipeline
from PIL import Image

from bounds import assert_bit_equal
from llm_dit.errors import LlmDitError
from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline
from llm_dit.generation.schedule import img2img_start

pytestmark = pytest.mark.numerics

PROMPTS = ["A red-roofed cottage in a green field", "A watercolour of a harbour at dusk"]
SIZE = (64, 48)  # width, height: not square, so a transposed latent would fail


def _init_image(path, seed: int = 0) -> Image.Image:
    """A structured RGB image (gradients and a block) at SIZE: the VAE's posterior is not trivial."""
    w, h = SIZE
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(0, 1, w).view(1, w).expand(h, w)
    y = torch.linspace(0, 1, h).view(h, 1).expand(h, w)
    rgb = torch.stack([x, y, (x + y) / 2], dim=-1) * 200 + torch.rand(h, w, 3, generator=g) * 40
    rgb[10:30, 20:40] = torch.tensor([220.0, 40.0, 30.0])
    image = Image.fromarray(rgb.clamp(0, 255).round().to(torch.uint8).numpy())
    image.save(path)
    return image


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    pipe = ZImageImg2ImgPipeline.from_pretrained(tiny_checkpoint, dtype=torch.float32)
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
def builtin_tiny():
    """The built-in tiny pipeline: the tiny VL twin fits it (the checkpoint fixture is a copy at another path)."""
    return LlmDitPipeline.from_pretrained(
        None, encoder={"device": "cpu", "torch_dtype": "float32"}, pipeline={"device": "cpu", "torch_dtype": "float32"}
    )


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    path = tmp_path_factory.mktemp("img2img") / "init.png"
    return path, _init_image(path)


def run_reference(pipe, image, *, seeds, strength, steps, shift, prompts=None, embeds=None, guidance=0.0, negative=""):
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config, shift=shift)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    kwargs = {"prompt": list(prompts)} if prompts is not None else {"prompt_embeds": embeds}
    if guidance > 0:
        kwargs["negative_prompt"] = [negative] * len(prompts)
    return pipe(
        image=image,
        strength=strength,
        width=SIZE[0],
        height=SIZE[1],
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators if len(generators) > 1 else generators[0],
        output_type="pt",
        **kwargs,
    ).images


CASES = [
    # seeds, strength, steps, shift, guidance
    pytest.param([0], 0.3, 8, 3.0, 0.0, id="s0.3"),
    pytest.param([5], 0.5, 8, 3.0, 0.0, id="s0.5"),
    pytest.param([7], 0.75, 5, 2.0, 0.0, id="s0.75-5steps-shift2"),
    pytest.param([9], 1.0, 4, 3.0, 0.0, id="s1.0"),
    pytest.param([3], 0.6, 6, 3.0, 2.5, id="s0.6-cfg"),
    pytest.param([11, 12], 0.45, 8, 3.0, 0.0, id="batched"),
]


@pytest.mark.parametrize(("seeds", "strength", "steps", "shift", "guidance"), CASES)
def test_img2img_matches_diffusers(reference, ours, init, seeds, strength, steps, shift, guidance):
    path, image = init
    prompts = PROMPTS[: len(seeds)]
    negative = "blurry" if guidance else ""
    expected = run_reference(
        reference, [image] * len(seeds) if len(seeds) > 1 else image, seeds=seeds, strength=strength, steps=steps,
        shift=shift, prompts=prompts, guidance=guidance, negative=negative,
    )  # fmt: skip
    requests = [
        GenerationRequest.build(
            p, seed=s, width=SIZE[0], height=SIZE[1], steps=steps, shift=shift, init_image=str(path),
            strength=strength, guidance_scale=guidance, negative_prompt=negative,
        )
        for p, s in zip(prompts, seeds, strict=True)
    ]  # fmt: skip
    results = ours.generate_batch(requests)
    actual = torch.stack([r.image for r in results])
    assert_bit_equal(actual, expected)
    if len(seeds) > 1:  # a batch of ours: one batched forward per step
        assert results[0].record["batch_size"] == len(seeds)
    start = img2img_start(steps, strength)
    record = results[0].record
    assert record["steps"] == steps - start and record["schedule_steps"] == steps
    assert record["img2img_start_step"] == start and record["strength"] == strength
    assert len(record["sigmas"]) == steps - start + 1 and record["init_image_sha256"]


@pytest.mark.parametrize("strength", [0.3, 0.7, 1.0])
def test_img2img_with_vl_features_as_embeddings_matches_diffusers(
    reference, ours, builtin_tiny, init, tmp_path, strength
):
    """VL conditioning's equivalent: the composed VL features (alpha 0.3 with the text) given to both pipelines."""
    path, image = init
    ref = tmp_path / "ref.png"
    _init_image(ref, seed=3)
    vl = GenerationRequest.build(
        PROMPTS[0], conditioning="vl", vl_image=str(ref), vl_alpha=0.3, width=SIZE[0], height=SIZE[1]
    )
    features = builtin_tiny.caption_features([vl])[0].embeddings
    expected = run_reference(reference, image, seeds=[21], strength=strength, steps=8, shift=3.0, embeds=[features])
    actual = ours.generate(
        embeddings=features, seed=21, width=SIZE[0], height=SIZE[1], steps=8, shift=3.0, init_image=str(path),
        strength=strength,
    ).image  # fmt: skip
    assert_bit_equal(actual.unsqueeze(0), expected)


def test_the_img2img_comparison_can_fail(reference, ours, init):
    path, image = init
    expected = run_reference(reference, image, seeds=[5], strength=0.5, steps=8, shift=3.0, prompts=PROMPTS[:1])
    common = dict(width=SIZE[0], height=SIZE[1], steps=8, shift=3.0, init_image=str(path))
    other_seed = ours.generate(PROMPTS[0], seed=6, strength=0.5, **common).image
    later_start = ours.generate(PROMPTS[0], seed=5, strength=0.55, **common).image  # int(8 - 4.4) = 3: one more step
    for actual in (other_seed, later_start):
        # Not rounding: the bit-equal comparisons above would catch it, and it moves pixels by 8-bit levels.
        assert (actual.unsqueeze(0) - expected).abs().max() > 1 / 255


def test_img2img_start_follows_diffusers_get_timesteps(reference):
    """Our step arithmetic equals diffusers' own get_timesteps on its scheduler, for every strength on a grid."""
    for steps in (1, 4, 8, 9):
        reference.scheduler.set_timesteps(steps)
        for k in range(1, 101):
            strength = k / 100
            _, remaining = reference.get_timesteps(steps, strength, "cpu")
            if remaining < 1:
                with pytest.raises(LlmDitError, match="runs no step"):
                    img2img_start(steps, strength)
            else:
                assert steps - img2img_start(steps, strength) == remaining, (steps, strength)


def test_strength_is_refused_without_init_image_and_bad_strengths_are_refused():
    with pytest.raises(LlmDitError, match="strength is read only with init_image"):
        GenerationRequest.build("a cat", strength=0.5)
    for bad in (0, -0.1, 1.5):
        with pytest.raises(LlmDitError, match=r"strength must be in \(0, 1\]"):
            GenerationRequest.build("a cat", strength=bad, init_image="x.png")

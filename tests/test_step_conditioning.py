"""Conditioning that changes over the denoising steps: vl_alpha_schedule and prompt_switch.

The reference is diffusers' own ZImagePipeline swapping its caption embeddings from ``callback_on_step_end`` (the
features of step i + 1 handed back at the end of step i): our loop must make the same image bit for bit. A constant
schedule (or a switch to the same prompt) is the plain run bit for bit; each distinct step conditioning is made
once; the record lists every step's.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline
from PIL import Image

import llm_dit.generation.pipeline as pipeline_module
from bounds import assert_bit_equal
from llm_dit.config import ConditioningSettings, conditioning_params
from llm_dit.config.step_schedules import parse_alpha_schedule
from llm_dit.errors import LlmDitError
from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline
from llm_dit.models.checkpoint import resolve_model_path

PROMPT_A = "A red-roofed cottage in a green field"
PROMPT_B = "A lighthouse on a rocky coast at night"
SIZE = dict(width=64, height=48)
CPU = {"device": "cpu", "torch_dtype": "float32"}


# -- the grammar (no model) -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("linear:1:0", "linear:1.0:0.0"),
        (" ease_in:0.8:0.2 ", "ease_in:0.8:0.2"),
        ("ease_out:1.0:0", "ease_out:1.0:0.0"),
        ("constant:.3", "constant:0.3"),
        ("step:1:0@3", "step:1.0:0.0@3"),
        ("step:1:0.5@sigma=0.7", "step:1.0:0.5@sigma=0.7"),
    ],
)
def test_schedules_have_one_canonical_spelling(text, canonical):
    assert (
        ConditioningSettings(conditioning="vl", vl_image=["x.png"], vl_alpha_schedule=text).vl_alpha_schedule
        == canonical
    )


def test_schedule_values_are_the_curves_at_each_step():
    sigmas = [1.0, 0.9, 0.75, 0.5]  # 4 steps: u = 0, 1/3, 2/3, 1
    u = [0.0, 1 / 3, 2 / 3, 1.0]
    assert parse_alpha_schedule("linear:1:0").values(sigmas) == pytest.approx([1 - x for x in u])
    assert parse_alpha_schedule("ease_in:0:1").values(sigmas) == pytest.approx([x * x for x in u])
    assert parse_alpha_schedule("ease_out:0:1").values(sigmas) == pytest.approx([1 - (1 - x) ** 2 for x in u])
    assert parse_alpha_schedule("step:1:0@2").values(sigmas) == [1.0, 1.0, 0.0, 0.0]
    assert parse_alpha_schedule("step:1:0@sigma=0.75").values(sigmas) == [1.0, 1.0, 1.0, 0.0]
    assert parse_alpha_schedule("constant:0.3").values(sigmas) == [0.3] * 4
    assert parse_alpha_schedule("linear:0.3:0.3").values(sigmas) == [0.3] * 4  # exactly: the plain run's alpha
    assert parse_alpha_schedule("linear:1:0").values([1.0]) == [1.0]  # one step: the start


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cosine:1:0", "curve 'cosine' is not one of"),
        ("linear:1", "needs CURVE:START:END"),
        ("linear:1:2", "end must be in 0..1"),
        ("linear:x:0", "start 'x' is not a number"),
        ("linear:1:0@3", "takes no @"),
        ("step:1:0", "step needs @K"),
        ("step:1:0@0", "K >= 1"),
        ("step:1:0@sigma=0", r"S in \(0, 1\]"),
        ("constant:0.3:0.4", "constant takes one alpha"),
    ],
)
def test_bad_schedules_are_refused_naming_the_grammar(text, message):
    with pytest.raises(ValueError, match=message):
        parse_alpha_schedule(text)


def test_per_step_settings_are_checked_as_a_whole():
    vl = dict(conditioning="vl", vl_image="x.png")
    with pytest.raises(LlmDitError, match="drop vl_alpha"):
        GenerationRequest.build("a", vl_alpha=0.3, vl_alpha_schedule="linear:1:0", **vl)
    with pytest.raises(LlmDitError, match="prompt_switch needs prompt_switch_step"):
        GenerationRequest.build("a", prompt_switch="b")
    with pytest.raises(LlmDitError, match="vl_alpha_schedule does nothing in this run"):
        GenerationRequest.build("a", vl_alpha_schedule="linear:1:0")
    with pytest.raises(LlmDitError, match="give a prompt, not embeddings"):
        GenerationRequest.build(embeddings=torch.zeros(3, 8), prompt_switch="b", prompt_switch_step=2)


def test_a_blend_is_read_when_some_step_mixes():
    base = dict(conditioning="vl", vl_image=["x.png"], vl_blend="adain")
    mixing = conditioning_params(ConditioningSettings(**base, vl_alpha_schedule="linear:1:0"))
    assert mixing["vl_blend"] == "adain" and mixing["vl_alpha"] is None
    ends_only = conditioning_params(ConditioningSettings(**base, vl_alpha_schedule="step:1:0@2"))
    assert ends_only["vl_blend"] is None  # alpha is 1 then 0: no step mixes


# -- against diffusers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ours():
    return LlmDitPipeline.from_pretrained(None, encoder=CPU, pipeline=CPU)


@pytest.fixture(scope="module")
def reference():
    pipe = ZImagePipeline.from_pretrained(resolve_model_path(None), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def ref_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("steps") / "ref.png"
    g = torch.Generator().manual_seed(0)
    Image.fromarray((torch.rand(40, 56, 3, generator=g) * 255).to(torch.uint8).numpy()).save(path)
    return str(path)


def diffusers_with_switches(reference, per_step: list[torch.Tensor], seed: int, steps: int) -> torch.Tensor:
    """diffusers' image with step i conditioned by ``per_step[i]`` (swapped in by its step-end callback)."""
    reference.scheduler = FlowMatchEulerDiscreteScheduler.from_config(reference.scheduler.config, shift=3.0)

    def swap(pipe, i, t, tensors):
        return {"prompt_embeds": [per_step[min(i + 1, steps - 1)]]}

    return reference(
        prompt_embeds=[per_step[0]],
        num_inference_steps=steps,
        guidance_scale=0.0,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="pt",
        callback_on_step_end=swap,
        callback_on_step_end_tensor_inputs=["prompt_embeds"],
        **SIZE,
    ).images


@pytest.mark.numerics
def test_prompt_switch_matches_diffusers_swapping_its_embeddings(ours, reference):
    a, b = ours.encoder.encode([PROMPT_A, PROMPT_B])
    result = ours.generate(PROMPT_A, prompt_switch=PROMPT_B, prompt_switch_step=3, steps=6, seed=4, **SIZE)
    expected = diffusers_with_switches(reference, [a.embeddings] * 3 + [b.embeddings] * 3, seed=4, steps=6)
    assert_bit_equal(result.image.unsqueeze(0), expected)
    assert [s["prompt"] for s in result.record["conditioning_schedule"]] == [PROMPT_A] * 3 + [PROMPT_B] * 3
    plain = ours.generate(PROMPT_A, steps=6, seed=4, **SIZE)
    assert (plain.image - result.image).abs().max() > 1 / 255  # the switch changed the image


@pytest.mark.numerics
@pytest.mark.parametrize("schedule", ["linear:1:0", "step:1:0.3@sigma=0.7", "ease_out:0.8:0.1"])
def test_alpha_schedule_matches_diffusers_swapping_its_embeddings(ours, reference, ref_image, schedule):
    vl = dict(conditioning="vl", vl_image=ref_image, **SIZE)
    result = ours.generate(PROMPT_A, vl_alpha_schedule=schedule, steps=5, seed=8, **vl)
    alphas = [s["vl_alpha"] for s in result.record["conditioning_schedule"]]
    sigmas = result.record["sigmas"][:-1]
    assert alphas == pytest.approx(parse_alpha_schedule(schedule).values(sigmas))
    per_alpha = {a: ours.caption_features([GenerationRequest.build(PROMPT_A, vl_alpha=a, **vl)])[0] for a in alphas}
    expected = diffusers_with_switches(reference, [per_alpha[a].embeddings for a in alphas], seed=8, steps=5)
    assert_bit_equal(result.image.unsqueeze(0), expected)
    assert result.record["distinct_step_features"] == len(set(alphas))
    assert result.record["conditioning_settings"]["vl_alpha_schedule"] == parse_alpha_schedule(schedule).text()


# -- constant schedules, features made once, batching ------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["constant:0.3", "linear:0.3:0.3", "ease_in:0.3:0.3", "step:0.3:0.3@2"])
def test_a_constant_schedule_is_the_plain_run_bit_for_bit(ours, ref_image, schedule):
    vl = dict(conditioning="vl", vl_image=ref_image, steps=4, seed=2, **SIZE)
    plain = ours.generate(PROMPT_A, vl_alpha=0.3, **vl)
    scheduled = ours.generate(PROMPT_A, vl_alpha_schedule=schedule, **vl)
    assert_bit_equal(scheduled.image, plain.image)
    assert scheduled.record["distinct_step_features"] == 1


def test_a_switch_to_the_same_prompt_is_the_plain_run_bit_for_bit(ours):
    plain = ours.generate(PROMPT_A, steps=4, seed=3, **SIZE)
    switched = ours.generate(PROMPT_A, prompt_switch=PROMPT_A, prompt_switch_step=2, steps=4, seed=3, **SIZE)
    assert_bit_equal(switched.image, plain.image)


def test_each_distinct_step_conditioning_is_composed_once(ours, ref_image, monkeypatch):
    calls = []
    real = pipeline_module.compose

    def counting(settings, **kwargs):
        calls.append(settings.vl_alpha)
        return real(settings, **kwargs)

    monkeypatch.setattr(pipeline_module, "compose", counting)
    vl = dict(conditioning="vl", vl_image=ref_image, steps=6, **SIZE)
    requests = [
        GenerationRequest.build(PROMPT_A, vl_alpha_schedule="step:0.9:0.2@3", seed=seed, **vl) for seed in (1, 2)
    ]
    results = ours.generate_batch(requests)
    assert sorted(calls) == [0.2, 0.9]  # two distinct alphas over 2 runs x 6 steps: composed twice in all
    assert [r.record["batch_size"] for r in results] == [2, 2]  # schedules batch like plain runs of equal steps


def test_scheduled_and_plain_runs_share_a_batch(ours, ref_image):
    vl = dict(conditioning="vl", vl_image=ref_image, steps=4, **SIZE)
    requests = [
        GenerationRequest.build(PROMPT_A, vl_alpha_schedule="linear:1:0", seed=1, **vl),
        GenerationRequest.build(PROMPT_A, vl_alpha=0.5, seed=1, **vl),
    ]
    results = ours.generate_batch(requests)
    assert [r.record["batch_size"] for r in results] == [2, 2]
    assert "conditioning_schedule" in results[0].record and "conditioning_schedule" not in results[1].record


def test_switch_and_schedule_steps_must_fall_inside_the_run(ours, ref_image):
    with pytest.raises(LlmDitError, match="prompt_switch_step 4 is not below the run's 4 steps"):
        ours.check([GenerationRequest.build(PROMPT_A, prompt_switch=PROMPT_B, prompt_switch_step=4, steps=4)])
    with pytest.raises(LlmDitError, match="switches at step 5, not below the run's 4 steps"):
        ours.check(
            [
                GenerationRequest.build(
                    PROMPT_A, conditioning="vl", vl_image=ref_image, vl_alpha_schedule="step:1:0@5", steps=4
                )
            ]
        )
    # img2img: the steps counted are those the run takes (8 at strength 0.5 = 4)
    with pytest.raises(LlmDitError, match="prompt_switch_step 4 is not below the run's 4 steps"):
        ours.check(
            [
                GenerationRequest.build(
                    PROMPT_A, prompt_switch=PROMPT_B, prompt_switch_step=4, steps=8, init_image=ref_image, strength=0.5
                )
            ]
        )

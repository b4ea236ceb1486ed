"""LlmDitPipeline end to end on the tiny checkpoint: records, precomputed embeddings, checks before loading,
batching, saving and the conditioning knobs.

Expectations are computed independently: sigmas by hand from the documented formula, token counts with the
tokenizer's chat template, batched and one-at-a-time float32 runs against a float64 copy of the pipeline (within
the rounding bound of tests/bounds.py), per-image times against a fake clock, PNG pixels with PIL/numpy.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from bounds import (
    assert_differ,
    assert_within_rounding,
    float64_pipeline,
    generate_counted,
    rounding_bound,
)
from llm_dit.conditioning.text_encoder import EncodedPrompt
from llm_dit.config import GenerationSettings
from llm_dit.errors import LlmDitError
from llm_dit.generation import pipeline as pipeline_module
from llm_dit.generation.image import read_record, to_pil
from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline, sampling_group
from llm_dit.models import checkpoint

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

SIZE = {"width": 64, "height": 64, "steps": 2}
LONG_PROMPT = " ".join(f"word{i} castle dragon" for i in range(40))  # > 64 tokens
RECORD_FIELDS = {
    "prompt",
    "formatted_prompt",
    "seed",
    "steps",
    "shift",
    "sigmas",
    "width",
    "height",
    "hidden_layer",
    "think_block",
    "system_prompt",
    "refiner",
    "guidance_scale",
    "model_fingerprint",
    "versions",
    "padding",
    "token_count",
}
SETTINGS = {
    "encoder": {"device": "cpu", "torch_dtype": "float32"},
    "pipeline": {"device": "cpu", "torch_dtype": "float32"},
}


def _refuse(*args, **kwargs):
    raise AssertionError("weights must not load here")


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return LlmDitPipeline.from_pretrained(tiny_checkpoint, **SETTINGS)


@pytest.fixture(scope="module")
def pipe64(pipe):
    """The float64 reference: the same modules in float64."""
    return float64_pipeline(pipe)


def reference(pipe64, prompt, **params):
    """(float64 image, rounding factor of a float32 run) for one request run alone (tests/bounds.py)."""
    result, factor = generate_counted(pipe64, GenerationRequest.build(prompt, **params))
    return result.image, factor


@pytest.fixture(scope="module")
def cold_pipe(tiny_checkpoint):
    """A pipeline that has loaded nothing; tests patch the loaders to refuse."""
    return LlmDitPipeline.from_pretrained(tiny_checkpoint, **SETTINGS)


@pytest.fixture
def refuse_loading(cold_pipe, monkeypatch):
    for name in ("load_transformer", "load_vae", "load_text_encoder"):
        monkeypatch.setattr(checkpoint, name, _refuse)
    yield cold_pipe
    assert cold_pipe._transformer._value is None
    assert cold_pipe._vae._value is None
    assert cold_pipe.encoder._model is None


def template(tokenizer, prompt, system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)


def count_encoder_rows(pipe):
    """Forward-hook the text encoder; returns a list that receives each forward's batch size."""
    rows: list[int] = []

    def hook(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        rows.append(int(ids.shape[0]))

    return rows, pipe.encoder.model.register_forward_hook(hook, with_kwargs=True)


# -- basic generation ---------------------------------------------------------------------------------------------


def test_generate_image_and_record(pipe, tiny_checkpoint):
    prompt = "A tabby cat sleeping on a sunlit windowsill"
    result = pipe.generate(prompt, seed=7, **SIZE)
    assert result.image.shape == (3, 64, 64)
    assert result.image.dtype == torch.float32
    assert result.image.min() >= 0.0 and result.image.max() <= 1.0
    assert result.image.std() > 0.01  # not a blank image
    record = result.record
    assert set(record) >= RECORD_FIELDS, RECORD_FIELDS - set(record)
    text = template(pipe.encoder.tokenizer, prompt)
    assert record["prompt"] == prompt
    assert record["formatted_prompt"] == text
    assert record["token_count"] == len(pipe.encoder.tokenizer(text)["input_ids"])
    assert record["seed"] == 7
    assert record["steps"] == 2
    assert record["shift"] == 3.0
    # 2 steps at shift 3: s = [1, 0.5] -> 3s / (1 + 2s) = [1, 0.75], then 0 (every operation exact in binary)
    assert record["sigmas"] == [1.0, 0.75, 0.0]
    assert (record["width"], record["height"]) == (64, 64)
    assert record["hidden_layer"] == -2
    assert record["think_block"] == "none"
    assert record["system_prompt"] is None
    assert record["refiner"] == "default"
    assert record["guidance_scale"] == 0.0
    assert record["padding"] == "diffusers"
    assert record["conditioning"] == "prompt"
    assert record["batch_size"] == 1
    assert re.fullmatch(r"[0-9a-f]{16}", record["model_fingerprint"])
    assert record["model_fingerprint"] == checkpoint.fingerprint(tiny_checkpoint)
    assert record["versions"]["torch"] == torch.__version__
    for package in ("diffusers", "transformers"):
        assert record["versions"][package] not in ("", None, "not installed")


def test_generate_is_deterministic_and_seeded(pipe):
    a = pipe.generate("a lighthouse", seed=1, **SIZE)
    b = pipe.generate("a lighthouse", seed=1, **SIZE)
    c, factor = generate_counted(pipe, GenerationRequest.build("a lighthouse", seed=2, **SIZE))
    assert torch.equal(a.image, b.image)  # the same call again
    assert_differ(a.image, c.image, factor)


def test_explicit_sigmas_record(pipe):
    result = pipe.generate("a lighthouse", sigmas=[1.0, 0.6, 0.2], width=64, height=64)
    # used verbatim: the given values as float32, and the final 0; the record keeps 8 decimals (+-5e-9)
    float32_values = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float32).tolist()
    assert result.record["sigmas"] == pytest.approx(float32_values, abs=5e-9)
    assert result.record["steps"] == 3
    assert result.record["shift"] is None


# -- precomputed embeddings -------------------------------------------------------------------------------------


def test_precomputed_embeddings_equal_prompt(pipe):
    prompt = "一只猫 in a neon-lit Tokyo alley"
    (encoded,) = pipe.encoder.encode(prompt)
    assert isinstance(encoded, EncodedPrompt)
    from_prompt = pipe.generate(prompt, seed=3, **SIZE)
    from_embeddings = pipe.generate(embeddings=encoded.embeddings.clone(), seed=3, **SIZE)
    assert torch.equal(from_prompt.image, from_embeddings.image)
    record = from_embeddings.record
    assert record["conditioning"] == "precomputed embeddings"
    assert record["prompt"] is None
    assert record["formatted_prompt"] is None and record["token_count"] is None
    # no text was encoded, so the record must not claim the encoder's settings shaped the image
    assert record["hidden_layer"] is None and record["think_block"] is None
    assert record["embedding_length"] == encoded.length
    fingerprint = record["embeddings_fingerprint"]
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert "embeddings_fingerprint" not in from_prompt.record
    other = pipe.generate(embeddings=encoded.embeddings * 1.5 + 0.1, seed=3, **SIZE)
    assert other.record["embeddings_fingerprint"] != fingerprint
    again = pipe.generate(embeddings=encoded.embeddings.clone(), seed=3, **SIZE)
    assert again.record["embeddings_fingerprint"] == fingerprint


def test_negative_embeddings_are_recorded_as_such(pipe):
    positive, negative = pipe.encoder.encode(["a cat", "blurry"])
    result = pipe.generate(
        embeddings=positive.embeddings, negative_embeddings=negative.embeddings, guidance_scale=2.0, seed=1, **SIZE
    )
    assert result.record["negative_prompt"] is None
    assert re.fullmatch(r"[0-9a-f]{16}", result.record["negative_embeddings_fingerprint"])


def test_max_batch_size_must_be_positive(tiny_checkpoint):
    with pytest.raises(LlmDitError, match="max_batch_size"):
        LlmDitPipeline.from_pretrained(tiny_checkpoint, max_batch_size=0)


@pytest.mark.parametrize(
    ("shape", "match"),
    [((10, 31), "width 31"), ((1505, 32), "1505 rows"), ((0, 32), "0 rows"), ((10,), "L, D")],
)
def test_bad_embeddings_raise_before_loading(refuse_loading, shape, match):
    with pytest.raises(LlmDitError, match=match):
        refuse_loading.generate(embeddings=torch.zeros(shape), seed=1, **SIZE)


def test_max_rows_embeddings_are_accepted_by_check(refuse_loading):
    refuse_loading.check([GenerationRequest.build(embeddings=torch.zeros(1504, 32), **SIZE)])


def test_from_components_reads_limits_from_the_modules(pipe, monkeypatch):
    """Caps, size multiple and caption width come from the modules' configs, as from a checkpoint's."""
    comp = LlmDitPipeline.from_components(pipe.encoder.tokenizer, pipe.encoder.model, pipe.transformer, pipe.vae)
    assert comp.encoder.max_caption_tokens == pipe.info.max_caption_tokens == 1504
    assert comp.size_multiple == pipe.info.size_multiple == 16
    assert comp.cap_feat_dim == pipe.info.cap_feat_dim == 32
    reference = pipe.generate("a red fox", seed=3, **SIZE)
    assert torch.equal(comp.generate("a red fox", seed=3, **SIZE).image, reference.image)
    monkeypatch.setattr(comp, "_sample", _refuse)  # a wrong width fails in check(), before any sampling
    for name in ("embeddings", "negative_embeddings"):
        good = torch.zeros(10, 32)
        params = {"embeddings": good, name: torch.zeros(10, 31), "guidance_scale": 2.0}
        with pytest.raises(LlmDitError, match=f"{name} has width 31, the DiT expects 32"):
            comp.generate(seed=1, **SIZE, **params)
    with pytest.raises(LlmDitError, match="72 is not a multiple of 16"):
        comp.check([GenerationRequest("a cat", generation=GenerationSettings.model_construct(width=72, height=64))])


def test_sampling_group():
    assert sampling_group(GenerationRequest.build("a", width=64, height=48, steps=3)) == (64, 48, 3, "default")
    explicit = GenerationRequest.build("a", sigmas=[1.0, 0.5], refiner="skip", width=32, height=32)
    assert sampling_group(explicit) == (32, 32, 2, "skip")  # explicit sigmas set the step count
    assert sampling_group(explicit, torch.tensor([1.0, 0.6, 0.3, 0.0])) == (32, 32, 3, "skip")  # given sigmas win


def test_record_keeps_the_encoder_device_after_offload(tiny_checkpoint):
    """The record says where the encoder ran for this image, even once it is offloaded."""
    fresh = LlmDitPipeline.from_pretrained(tiny_checkpoint, **SETTINGS)
    requests = [GenerationRequest.build("a lighthouse", seed=1, **SIZE)]
    fresh.precompute_encodings(requests)
    fresh.offload_encoder()
    assert fresh.encoder._model is None
    (result,) = fresh.generate_batch(requests)
    assert fresh.encoder._model is None  # the cached encoding was used; nothing reloaded
    assert result.record["devices"] == {"dit": "cpu/float32", "vae": "cpu/float32", "encoder": "cpu/float32"}
    # precomputed features without CFG: no text was encoded for this image, so no encoder is named
    (encoded,) = fresh.encoder.encode("a lighthouse")
    plain = fresh.generate(embeddings=encoded.embeddings, seed=1, **SIZE)
    assert plain.record["devices"] == {"dit": "cpu/float32", "vae": "cpu/float32"}
    # ... but a text negative prompt was encoded
    cfg = fresh.generate(embeddings=encoded.embeddings, guidance_scale=2.0, seed=1, **SIZE)
    assert cfg.record["devices"]["encoder"] == "cpu/float32"


# -- check() before any weights load ----------------------------------------------------------------------------


def test_check_rejects_size_not_multiple_of_16(refuse_loading):
    # Bypass GenerationSettings' own validator to reach check() itself.
    settings = GenerationSettings.model_construct(**{**GenerationSettings().model_dump(), "width": 72, "height": 64})
    with pytest.raises(LlmDitError, match="72"):
        refuse_loading.check([GenerationRequest("a cat", generation=settings)])


def test_check_rejects_bad_sigmas(refuse_loading):
    settings = GenerationSettings.model_construct(**{**GenerationSettings().model_dump(), "sigmas": [0.5, 0.7]})
    with pytest.raises(LlmDitError, match="decreasing"):
        refuse_loading.check([GenerationRequest("a cat", generation=settings)])


def test_over_cap_prompt_raises_before_loading(refuse_loading):
    with pytest.raises(LlmDitError, match="over the cap of 64"):
        refuse_loading.generate(LONG_PROMPT, max_text_tokens=64, long_prompt_mode="none", **SIZE)
    # also when it is only the negative prompt that is too long
    with pytest.raises(LlmDitError, match="over the cap of 64"):
        refuse_loading.generate(
            "a cat",
            negative_prompt=LONG_PROMPT,
            guidance_scale=2.0,
            max_text_tokens=64,
            long_prompt_mode="none",
            **SIZE,
        )


def test_a_bad_request_in_a_batch_stops_everything(refuse_loading):
    good = GenerationRequest.build("a cat", **SIZE)
    bad = GenerationRequest.build(LONG_PROMPT, max_text_tokens=64, long_prompt_mode="none", **SIZE)
    with pytest.raises(LlmDitError):
        refuse_loading.generate_batch([good, good, bad])


@pytest.mark.parametrize(
    "params",
    [{"width": 72}, {"height": 100}, {"sigmas": [0.5, 0.7]}, {"sigmas": [1.0, 1.5]}],
    ids=["width72", "height100", "increasing-sigmas", "sigma-over-1"],
)
def test_bad_generation_params_raise_before_loading(refuse_loading, params):
    # LlmDitError (not pydantic's ValidationError) naming the value; no weights load.
    with pytest.raises(LlmDitError, match=r"width|height|sigmas"):
        refuse_loading.generate("a cat", **{**SIZE, **params})


def test_unknown_parameter_raises(refuse_loading):
    with pytest.raises(LlmDitError, match="stpes"):
        refuse_loading.generate("a cat", stpes=4)


# -- batching ---------------------------------------------------------------------------------------------------

BATCH = [
    ("A red fox in the snow", {"seed": 1, "shift": 3.0, "guidance_scale": 0.0}),
    ("An old lighthouse at dusk", {"seed": 2, "shift": 1.5, "guidance_scale": 0.0}),
    ("Abstract patterns in blue and gold", {"seed": 3, "shift": 3.0, "guidance_scale": 3.0, "negative_prompt": "dull"}),
    ("A red fox in the snow", {"seed": 4, "shift": 2.0, "guidance_scale": 2.0}),
]


@pytest.fixture(scope="module")
def singles(pipe):
    return [pipe.generate(prompt, **SIZE, **params) for prompt, params in BATCH]


@pytest.fixture(scope="module")
def references(pipe64):
    """(float64 image, factor) per BATCH entry; any two differ by more than 10 rounding bounds, so results
    routed to the wrong request could not pass the comparisons below."""
    refs = [reference(pipe64, prompt, **SIZE, **params) for prompt, params in BATCH]
    for i, (a, factor_a) in enumerate(refs):
        for b, factor_b in refs[i + 1 :]:
            assert (a - b).abs().max() > 10 * rounding_bound(torch.ones(1), max(factor_a, factor_b))
    return refs


def test_batch_equals_single_runs(pipe, singles, references):
    requests = [GenerationRequest.build(prompt, tag=i, **SIZE, **params) for i, (prompt, params) in enumerate(BATCH)]
    pipe.clear_encoding_cache()
    rows, handle = count_encoder_rows(pipe)
    try:
        results = pipe.generate_batch(requests)
        again = pipe.generate_batch(requests[:1])
    finally:
        handle.remove()
    # distinct texts: 3 prompts + "dull" + "" (the default negative); the duplicate prompt is encoded once,
    # and a later batch reuses the cached encodings (no second forward)
    assert rows == [5]
    # A batch of 4, a batch of 1 and a lone run are different shapes: each is compared with the float64 run.
    assert_within_rounding(again[0].image, *references[0])
    assert [r.tag for r in results] == [0, 1, 2, 3]
    for result, single, (ref, factor), (prompt, params) in zip(results, singles, references, BATCH, strict=True):
        assert_within_rounding(result.image, ref, factor)
        assert_within_rounding(single.image, ref, factor)
        assert result.record["batch_size"] == 4
        assert result.record["prompt"] == prompt
        assert result.record["seed"] == params["seed"]
        assert result.record["shift"] == params["shift"]
        assert result.record["guidance_scale"] == params["guidance_scale"]
        assert result.record["sigmas"] == single.record["sigmas"]


def test_max_batch_size_splits_into_chunks(pipe, references, monkeypatch):
    monkeypatch.setattr(pipe, "max_batch_size", 2)
    requests = [GenerationRequest.build(prompt, tag=i, **SIZE, **params) for i, (prompt, params) in enumerate(BATCH)]
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda module, args, output: calls.append(len(args[0])))
    try:
        results = pipe.generate_batch(requests)
    finally:
        handle.remove()
    # 2 chunks x 2 steps; chunk 1 has no CFG (2 samples), chunk 2 has CFG on both (2 + 2 negatives)
    assert calls == [2, 2, 4, 4]
    assert [r.tag for r in results] == [0, 1, 2, 3]
    for result, (ref, factor) in zip(results, references, strict=True):
        assert result.record["batch_size"] == 2
        assert_within_rounding(result.image, ref, factor)


def test_seconds_per_image_is_the_batch_time_over_its_size(pipe, monkeypatch):
    """A fake clock that advances 1 s per DiT forward and at no other time: a batch of n images sampled in S
    steps takes S forwards, S seconds, and each of its records says so (batch seconds, size, its position) and
    S / n seconds per image batched; on a CPU there is no peak accelerator memory (None, not a made-up 0)."""
    clock = [0.0]

    def tick(module, args, output):
        clock[0] += 1.0

    monkeypatch.setattr(pipeline_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(pipe, "max_batch_size", 3)
    requests = [GenerationRequest.build(f"a cat {i}", seed=i, **SIZE) for i in range(5)]  # batches of 3 and 2
    requests.append(GenerationRequest.build("a dog", seed=9, width=64, height=64, steps=3))  # alone, 3 steps
    handle = pipe.transformer.register_forward_hook(tick)
    try:
        results = pipe.generate_batch(requests)
    finally:
        handle.remove()
    assert clock[0] == 2 + 2 + 3
    assert [r.record["batch_size"] for r in results] == [3, 3, 3, 2, 2, 1]
    assert [r.record["batch_seconds"] for r in results] == [2.0] * 5 + [3.0]
    assert [r.record["batch_position"] for r in results] == [0, 1, 2, 0, 1, 0]
    assert [r.record["seconds_per_image_batched"] for r in results] == [round(2 / 3, 6)] * 3 + [1.0, 1.0, 3.0]
    assert [r.record["peak_memory_bytes"] for r in results] == [None] * 6


def test_groups_by_size_and_steps_in_input_order(pipe, pipe64):
    specs = [
        ("a cat", {"seed": 1, "width": 64, "height": 64, "steps": 2}),
        ("a dog", {"seed": 2, "width": 64, "height": 48, "steps": 2}),
        ("a cow", {"seed": 3, "width": 64, "height": 64, "steps": 3}),
        ("a pig", {"seed": 4, "width": 64, "height": 64, "steps": 2}),
        ("a hen", {"seed": 5, "width": 48, "height": 64, "steps": 2, "refiner": "skip"}),
        ("a fox", {"seed": 6, "width": 64, "height": 64, "steps": 2, "refiner": "skip"}),
    ]
    requests = [GenerationRequest.build(p, tag=p, **params) for p, params in specs]
    results = pipe.generate_batch(requests)
    assert [r.tag for r in results] == [p for p, _ in specs]
    expected_batch = [2, 1, 1, 2, 1, 1]
    for result, (prompt, params), size in zip(results, specs, expected_batch, strict=True):
        assert result.image.shape == (3, params["height"], params["width"])
        assert result.record["prompt"] == prompt
        assert result.record["steps"] == params["steps"]
        assert result.record["batch_size"] == size
        assert_within_rounding(result.image, *reference(pipe64, prompt, **params))


def test_progress_reports_every_forward(pipe):
    seen = []
    requests = [
        GenerationRequest.build("a", seed=1, **SIZE),
        GenerationRequest.build("b", seed=2, width=64, height=64, steps=3),
    ]
    pipe.generate_batch(requests, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (5, 5)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


# -- saving -----------------------------------------------------------------------------------------------------


def test_save_png_record_and_pixels(pipe, tmp_path):
    result = pipe.generate("a harbour at night", seed=11, **SIZE)
    path = tmp_path / "out" / "image.png"
    saved = result.save(path)
    assert saved == path and path.is_file()
    assert read_record(path) == result.record
    with Image.open(path) as img:
        assert img.mode == "RGB" and img.size == (64, 64)
        pixels = np.asarray(img)
    assert np.array_equal(pixels, np.asarray(to_pil(result.image)))
    expected = (result.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(pixels, expected)
    before = path.read_bytes()
    other = pipe.generate("something else", seed=12, **SIZE)
    with pytest.raises(LlmDitError, match="exists"):
        other.save(path)
    assert path.read_bytes() == before
    other.save(path, overwrite=True)
    assert read_record(path) == other.record


# -- conditioning knobs -----------------------------------------------------------------------------------------


CASTLE = "A castle on a hill under a stormy sky"


@pytest.fixture(scope="module")
def counted_baseline(pipe):
    """(result, rounding factor) of the castle prompt at seed 5 (tests/bounds.py)."""
    return generate_counted(pipe, GenerationRequest.build(CASTLE, seed=5, **SIZE))


@pytest.fixture(scope="module")
def baseline(counted_baseline):
    return counted_baseline[0]


@pytest.mark.parametrize(
    ("params", "record_key", "value"),
    [
        ({"refiner": "skip"}, "refiner", "skip"),
        ({"refiner": "double"}, "refiner", "double"),
        ({"think_block": "empty"}, "think_block", "empty"),
        ({"system_prompt": "You describe images."}, "system_prompt", "You describe images."),
        ({"hidden_layer": -6}, "hidden_layer", -6),
    ],
)
def test_conditioning_knobs_change_image_and_record(pipe, counted_baseline, params, record_key, value):
    baseline, baseline_factor = counted_baseline
    result, factor = generate_counted(pipe, GenerationRequest.build(CASTLE, seed=5, **SIZE, **params))
    assert result.record[record_key] == value
    assert baseline.record[record_key] != value
    assert_differ(result.image, baseline.image, max(factor, baseline_factor))


def test_think_block_and_system_prompt_reach_formatted_prompt(pipe, baseline):
    tok = pipe.encoder.tokenizer
    empty = pipe.generate(CASTLE, seed=5, think_block="empty", **SIZE)
    assert empty.record["formatted_prompt"] == baseline.record["formatted_prompt"] + "<think>\n\n</think>\n\n"
    assert empty.record["token_count"] == baseline.record["token_count"] + 4
    system = pipe.generate(CASTLE, seed=5, system_prompt="Be vivid.", **SIZE)
    assert system.record["formatted_prompt"] == template(tok, CASTLE, "Be vivid.")


def test_layer_weights_generate(pipe, counted_baseline):
    baseline, baseline_factor = counted_baseline
    request = GenerationRequest.build(CASTLE, seed=5, layer_weights={-2: 0.5, -6: 0.5}, **SIZE)
    result, factor = generate_counted(pipe, request)
    assert result.record["hidden_layer"] is None
    assert result.record["layer_weights"] == {"-2": 0.5, "-6": 0.5}
    assert_differ(result.image, baseline.image, max(factor, baseline_factor))


def test_layer_sweep_encodes_each_prompt_once(pipe, pipe64):
    """Requests differing only in the layer choice share one encoder forward (all layers at once)."""
    pipe.clear_encoding_cache()
    layer_choices = [{"hidden_layer": -2}, {"hidden_layer": -6}, {"layer_weights": {-2: 0.5, -9: 0.5}}]
    requests = [
        GenerationRequest.build(prompt, seed=1, **SIZE, **choice)
        for prompt in ("a red fox", "a lighthouse")
        for choice in layer_choices
    ]
    rows, handle = count_encoder_rows(pipe)
    try:
        results = pipe.generate_batch(requests)
    finally:
        handle.remove()
    assert rows == [2]
    assert_within_rounding(results[4].image, *reference(pipe64, "a lighthouse", seed=1, hidden_layer=-6, **SIZE))
    assert results[5].record["layer_weights"] == {"-2": 0.5, "-9": 0.5}

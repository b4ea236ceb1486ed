"""Text-image scorers (SigLIP/SigLIP2, CLIPScore, PickScore) on tiny random models of the real transformers classes."""

from __future__ import annotations

import contextlib
import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from bounds import scorer_tolerance as clip_siglip_tolerance
from llm_dit.errors import LlmDitError
from llm_dit.metrics.compute import weights_key
from llm_dit.metrics.scorers import (
    SCORERS,
    ClipScorer,
    HpsV2Scorer,
    ImageTextScorer,
    PickScoreScorer,
    SiglipScorer,
    text_inputs,
)
from llm_dit.models import checkpoint
from tiny_scorers import build_tiny_clip, build_tiny_siglip

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

KINDS = ("siglip", "naflex", "clip", "pickscore")
CLIP_KINDS = ("clip", "pickscore")  # CLIPModel checkpoints: the same text handling
# exp(logit_scale) of the tiny PickScore twin: neither CLIP's initial 1 / 0.07 nor PickScore_v1's ~100, so a scorer
# that used a constant instead of the model's own scale would be off.
PICKSCORE_SCALE = 37.0
SIGLIP_KINDS = ("siglip", "naflex")
PROMPTS = [
    "A photo of a cat",
    "a red dog on the grass",
    "The blue car parked in a city street at night",
    "two birds",
    "A bowl of fruit on a wooden table",
    "Snowy mountains under a clear sky",
]
LONG_PROMPT = "A very detailed photo of a red cat sitting on the blue sofa in the living room. " * 12


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny model directory per kind; read-only (tests that damage one work on a copy)."""
    root = tmp_path_factory.mktemp("scorers")
    return {
        "siglip": build_tiny_siglip(root / "siglip"),
        "naflex": build_tiny_siglip(root / "naflex", naflex=True),
        "clip": build_tiny_clip(root / "clip"),
        "pickscore": build_tiny_clip(root / "pickscore", seed=1, logit_scale=PICKSCORE_SCALE),
    }


def _scorer_class(kind: str) -> type[ImageTextScorer]:
    return {"clip": ClipScorer, "pickscore": PickScoreScorer}.get(kind, SiglipScorer)


def scorer_tolerance(scorer: ImageTextScorer) -> float:
    """bounds.scorer_tolerance, and for PickScore its CLIPScore bound rescaled: the same CLIP towers give the
    same bound on the cosine, which a CLIPScore carries x 100 and PickScore x exp(logit_scale)."""
    if not isinstance(scorer, PickScoreScorer):
        return clip_siglip_tolerance(scorer)
    as_clip = ClipScorer(
        scorer.path, scorer.model, scorer.processor, device=scorer.device, dtype=scorer.dtype, batch_size=1
    )
    return clip_siglip_tolerance(as_clip) / 100.0 * float(scorer.model.logit_scale.exp())


@pytest.fixture(scope="module")
def scorers(model_dirs: dict[str, Path]) -> dict[str, ImageTextScorer]:
    return {kind: _scorer_class(kind).from_pretrained(path, device="cpu") for kind, path in model_dirs.items()}


def _images(count: int, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of varied sizes and aspect ratios (NaFlex keeps the aspect ratio)."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (48, 24), (24, 56), (64, 64), (40, 30), (30, 40), (33, 47), (50, 20)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in (sizes * 2)[:count]]


def _model_matrix(scorer: ImageTextScorer, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
    """[i, j] = the score of image i with text j, from the model's own forward over all pairs.

    Tokenization is spelled out here (not text_inputs): SigLIP text lower-cased, right-padded to 64, no mask;
    CLIP text padded to the longest and truncated to 77, with the mask.
    """
    tokenizer = scorer.processor.tokenizer
    pixels = scorer.processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
    with torch.inference_mode():
        if isinstance(scorer, SiglipScorer):
            ids = tokenizer(
                [t.lower() for t in texts],
                padding="max_length",
                max_length=64,
                truncation=True,
                padding_side="right",
                return_tensors="pt",
            )["input_ids"]
            out = scorer.model(input_ids=ids, **pixels)
            # By hand from the model's own (normalised) embeddings, checked against its logits.
            scale, bias = scorer.model.logit_scale.exp(), scorer.model.logit_bias
            by_hand = torch.sigmoid(scale * out.image_embeds @ out.text_embeds.T + bias)
            torch.testing.assert_close(by_hand, torch.sigmoid(out.logits_per_image))
            return by_hand
        text = tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        out = scorer.model(**text, **pixels)
        cos = out.image_embeds @ out.text_embeds.T
        torch.testing.assert_close(cos, out.logits_per_image / scorer.model.logit_scale.exp())
        if isinstance(scorer, PickScoreScorer):
            # PickScore's reference code: the towers' features, L2-normalised by hand, times exp(logit_scale).
            image_embs = scorer.model.get_image_features(**pixels).pooler_output
            text_embs = scorer.model.get_text_features(**text).pooler_output
            image_embs = image_embs / image_embs.norm(dim=-1, keepdim=True)
            text_embs = text_embs / text_embs.norm(dim=-1, keepdim=True)
            by_hand = scorer.model.logit_scale.exp() * (image_embs @ text_embs.T)
            torch.testing.assert_close(by_hand, out.logits_per_image)
            return by_hand
        return 100 * cos.clamp(min=0)


# --- loading and ranges ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_loads_and_scores_each_pair(kind: str, scorers: dict[str, ImageTextScorer], model_dirs: dict[str, Path]):
    scorer = scorers[kind]
    scores = scorer.score(_images(len(PROMPTS)), PROMPTS)
    assert len(scores) == len(PROMPTS)
    assert all(type(s) is float and math.isfinite(s) for s in scores)
    if kind == "clip":
        assert scorer.name == "clip_score"
        assert all(0.0 <= s <= 100.0 for s in scores)
    elif kind == "pickscore":
        assert scorer.name == "pickscore"
        assert all(abs(s) <= PICKSCORE_SCALE + scorer_tolerance(scorer) for s in scores)  # a scaled cosine
    else:
        assert scorer.name == "siglip"
        assert all(0.0 < s < 1.0 for s in scores)
    assert max(scores) - min(scores) > scorer_tolerance(scorer)  # input-sensitive, beyond rounding
    # The metrics pass keys stored scores by the directory's fingerprint (with the metric's registry version).
    assert weights_key(model_dirs[kind]) == checkpoint.fingerprint(model_dirs[kind])
    assert scorer.model.training is False
    assert scorer.score([], []) == []


def test_loaded_classes(scorers: dict[str, ImageTextScorer]):
    assert type(scorers["siglip"].model).__name__ == "SiglipModel"
    assert type(scorers["naflex"].model).__name__ == "Siglip2Model"
    assert type(scorers["clip"].model).__name__ == "CLIPModel"
    # transformers 5 maps model_type siglip2 to its lower-casing Siglip2Tokenizer, whatever tokenizer_config says.
    assert type(scorers["siglip"].processor.tokenizer).__name__ == "GemmaTokenizer"
    assert type(scorers["naflex"].processor.tokenizer).__name__ == "Siglip2Tokenizer"


def test_mismatched_lengths_rejected(scorers: dict[str, ImageTextScorer]):
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorers["siglip"].score(_images(2), PROMPTS[:1])


# --- text preprocessing --------------------------------------------------------------------------------------


@contextlib.contextmanager
def captured_text_inputs(scorer: ImageTextScorer) -> Iterator[list[dict[str, Any]]]:
    """The input_ids and attention_mask the scorer's text tower receives, via a forward pre-hook (no mocks)."""
    seen: list[dict[str, Any]] = []

    def hook(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append({"input_ids": kwargs["input_ids"].clone(), "attention_mask": kwargs.get("attention_mask")})

    handle = scorer.model.text_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("kind", SIGLIP_KINDS)
def test_siglip_text_is_lowercased_and_right_padded_to_64(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    tokenizer = scorer.processor.tokenizer
    prompt = "A Photo of a Cat"
    with captured_text_inputs(scorer) as calls:
        scorer.score(_images(1), [prompt])
    (call,) = calls
    ids = call["input_ids"]
    assert ids.shape == (1, 64)
    assert call["attention_mask"] is None  # trained without a padding mask: the pads are attended to
    tokens = tokenizer(prompt.lower())["input_ids"]
    assert 0 < len(tokens) < 64
    assert ids[0, : len(tokens)].tolist() == tokens  # lower-cased content first
    assert (ids[0, len(tokens) :] == tokenizer.pad_token_id).all()  # then pad tokens, on the right


@pytest.mark.parametrize("kind", SIGLIP_KINDS)
def test_siglip_long_text_is_truncated_to_64(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    tokenizer = scorer.processor.tokenizer
    full = tokenizer(LONG_PROMPT.lower())["input_ids"]
    assert len(full) > 64
    with captured_text_inputs(scorer) as calls:
        scorer.score(_images(2), [LONG_PROMPT, "two birds"])
    (call,) = calls
    ids = call["input_ids"]
    assert ids.shape == (2, 64)
    assert ids[0].tolist() == tokenizer(LONG_PROMPT.lower(), truncation=True, max_length=64)["input_ids"]
    assert (ids[0] != tokenizer.pad_token_id).all()


def test_siglip_scores_ignore_case(scorers: dict[str, ImageTextScorer]):
    # The fixed-resolution checkpoint ships a GemmaTokenizer, which does not lower-case by itself.
    scorer = scorers["siglip"]
    tokenizer = scorer.processor.tokenizer
    assert tokenizer("A RED Dog")["input_ids"] != tokenizer("a red dog")["input_ids"]
    images = _images(2)
    assert scorer.score(images, ["A RED Dog", "Two Birds"]) == scorer.score(images, ["a red dog", "two birds"])


@pytest.mark.parametrize("kind", CLIP_KINDS)
def test_clip_text_is_padded_to_longest_and_truncated_to_77(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    tokenizer = scorer.processor.tokenizer
    short = tokenizer("two birds")["input_ids"]
    with captured_text_inputs(scorer) as calls:
        scorer.score(_images(1), ["two birds"])
        scorer.score(_images(2), [LONG_PROMPT, "two birds"])
    first, second = calls
    assert first["input_ids"].tolist() == [short]  # no padding beyond the batch's longest text
    assert first["attention_mask"] is not None
    assert second["input_ids"].shape == (2, 77)
    assert second["input_ids"][0, -1].item() == tokenizer.eos_token_id  # truncation keeps end-of-text
    assert second["input_ids"][1, len(short) :].eq(tokenizer.pad_token_id).all()
    assert second["attention_mask"][1].sum().item() == len(short)


def test_text_inputs_helper(scorers: dict[str, ImageTextScorer]):
    siglip = text_inputs(scorers["siglip"].processor, ["a cat", LONG_PROMPT], "siglip")
    assert set(siglip) == {"input_ids"}
    assert siglip["input_ids"].shape == (2, 64)
    clip = text_inputs(scorers["clip"].processor.tokenizer, ["a cat", LONG_PROMPT], "clip")
    assert set(clip) == {"input_ids", "attention_mask"}
    assert clip["input_ids"].shape == (2, 77)
    with pytest.raises(ValueError, match="unknown text kind"):
        text_inputs(scorers["clip"].processor, ["a cat"], "blip")  # type: ignore[arg-type]


# --- correctness -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_scores_match_the_models_own_computation(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    images = _images(len(PROMPTS))
    matrix = _model_matrix(scorer, images, PROMPTS)
    scores = torch.tensor(scorer.score(images, PROMPTS))
    # The model's forward over all pairs at once vs the scorer's per-pair batches: other shapes, so within
    # the derived tolerance, not bit-equal.
    tol = scorer_tolerance(scorer)
    torch.testing.assert_close(scores, matrix.diagonal(), rtol=0, atol=tol)
    # Every (image, text) combination, as pairs: the whole matrix.
    n = len(PROMPTS)
    every = scorer.score([images[i] for i in range(n) for _ in range(n)], PROMPTS * n)
    torch.testing.assert_close(torch.tensor(every).view(n, n), matrix, rtol=0, atol=tol)
    # The entries of each row lie further apart than the tolerance, so a pairing mix-up would show.
    for row in matrix:
        values = (row[row > 0] if kind == "clip" else row).sort().values  # CLIPScores clamped to 0 tie by design
        assert ((values[1:] - values[:-1]) > 2 * tol).all(), row
    if kind == "clip":  # the clamp at 0 is exercised, and so are positive similarities
        assert (matrix == 0).any()
        assert (matrix > 0).any()


@pytest.mark.parametrize("kind", KINDS)
def test_scores_are_per_pair(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    images = _images(len(PROMPTS))
    matrix = _model_matrix(scorer, images, PROMPTS)
    perm = [2, 0, 5, 1, 3, 4]
    permuted = scorer.score(images, [PROMPTS[j] for j in perm])
    expected = torch.stack([matrix[i, j] for i, j in enumerate(perm)])
    tol = scorer_tolerance(scorer)
    torch.testing.assert_close(torch.tensor(permuted), expected, rtol=0, atol=tol)
    # Swapping texts changes the scores, by more than rounding could (both lists are within tol / 2 of exact).
    assert max(abs(x - y) for x, y in zip(permuted, scorer.score(images, PROMPTS), strict=True)) > tol


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_does_not_change_scores(kind: str, model_dirs: dict[str, Path]):
    images = _images(7)
    texts = [*PROMPTS, LONG_PROMPT]  # mixed lengths: CLIP pads each batch to its own longest text
    scorers = [_scorer_class(kind).from_pretrained(model_dirs[kind], device="cpu", batch_size=n) for n in (1, 3, 8)]
    results = [scorer.score(images, texts) for scorer in scorers]
    for other in results[1:]:  # other batch shapes: within the tolerance
        np.testing.assert_allclose(other, results[0], rtol=0, atol=scorer_tolerance(scorers[0]))


@pytest.mark.parametrize("kind", KINDS)
def test_images_are_converted_to_rgb(kind: str, scorers: dict[str, ImageTextScorer]):
    scorer = scorers[kind]
    rgb = _images(2)
    others = [rgb[0].convert("L"), rgb[1].convert("RGBA")]
    expected = scorer.score([im.convert("RGB") for im in others], PROMPTS[:2])
    # The scorer converts the same way: the same pixels in the same batch, literally the same computation.
    assert scorer.score(others, PROMPTS[:2]) == expected


def test_unload_frees_the_model(model_dirs: dict[str, Path]):
    scorer = SiglipScorer.from_pretrained(model_dirs["siglip"], device="cpu")
    scorer.unload()
    assert scorer.model is None
    with pytest.raises(LlmDitError, match="unloaded"):
        scorer.score(_images(1), ["a cat"])
    with ClipScorer.from_pretrained(model_dirs["clip"], device="cpu") as clip:
        assert clip.score(_images(1), ["a cat"])
    assert clip.model is None


# --- bad directories -------------------------------------------------------------------------------------------


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to load a model or processor fail the test: errors must come before loading."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tried to load before the directory was checked")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", refuse)


def _copy(src: Path, dest: Path, *, without: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns(*without))
    return dest


def _error(cls: type[ImageTextScorer], path: Path) -> str:
    with pytest.raises(LlmDitError) as excinfo:
        cls.from_pretrained(path, device="cpu")
    message = str(excinfo.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.usefixtures("no_loading")
def test_missing_directory(tmp_path: Path):
    message = _error(SiglipScorer, tmp_path / "nowhere")
    assert "does not exist" in message
    assert "set [default.metrics] siglip_path to a local SigLIP2 checkpoint" in message
    assert "clip_path" in _error(ClipScorer, tmp_path / "nowhere")
    message = _error(PickScoreScorer, tmp_path / "nowhere")
    assert message == (
        f"{tmp_path / 'nowhere'}: PickScore (CLIP) model directory does not exist; set [default.metrics] "
        "pickscore_path to a local PickScore_v1 checkpoint with its CLIP-H processor files"
    )


@pytest.mark.usefixtures("no_loading")
def test_directory_without_config(tmp_path: Path):
    assert "not a SigLIP/SigLIP2 model directory (no config.json)" in _error(SiglipScorer, tmp_path)
    (tmp_path / "config.json").write_text("{not json", encoding="utf-8")
    assert "cannot read config.json" in _error(SiglipScorer, tmp_path)


@pytest.mark.usefixtures("no_loading")
def test_wrong_model_type(model_dirs: dict[str, Path]):
    message = _error(SiglipScorer, model_dirs["clip"])
    assert message == (
        f"{model_dirs['clip']}: not a SigLIP/SigLIP2 model directory (config.json model_type 'clip'); "
        "set [default.metrics] siglip_path to a local SigLIP2 checkpoint"
    )
    assert "(config.json model_type 'siglip2'); set [default.metrics] clip_path" in _error(
        ClipScorer, model_dirs["naflex"]
    )
    assert (
        "not a PickScore (CLIP) model directory (config.json model_type 'siglip'); set [default.metrics] "
        "pickscore_path" in _error(PickScoreScorer, model_dirs["siglip"])
    )


@pytest.mark.usefixtures("no_loading")
def test_missing_weights(model_dirs: dict[str, Path], tmp_path: Path):
    bare = _copy(model_dirs["siglip"], tmp_path / "bare", without=("*.safetensors",))
    assert "incomplete SigLIP/SigLIP2 model directory: no weights" in _error(SiglipScorer, bare)

    sharded = _copy(model_dirs["clip"], tmp_path / "sharded", without=("*.safetensors",))
    index = {"metadata": {}, "weight_map": {"logit_scale": "model-00001-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    assert "missing weight shards model-00001-of-00002.safetensors" in _error(ClipScorer, sharded)


@pytest.mark.usefixtures("no_loading")
def test_missing_processor_files(model_dirs: dict[str, Path], tmp_path: Path):
    # Without tokenizer.json AutoProcessor would still load a Gemma tokenizer that maps every word to <unk>.
    no_tokenizer = _copy(model_dirs["naflex"], tmp_path / "no-tok", without=("tokenizer.json",))
    assert "no tokenizer files" in _error(SiglipScorer, no_tokenizer)
    no_images = _copy(model_dirs["clip"], tmp_path / "no-img", without=("processor_config.json",))
    assert "no image processor config" in _error(ClipScorer, no_images)


def test_corrupt_weights_fail_in_one_line(model_dirs: dict[str, Path], tmp_path: Path):
    broken = _copy(model_dirs["siglip"], tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    assert "cannot load the SigLIP/SigLIP2 model" in _error(SiglipScorer, broken)


def test_bad_settings_rejected_before_loading(model_dirs: dict[str, Path], no_loading: None):
    with pytest.raises(LlmDitError, match="batch size"):
        SiglipScorer.from_pretrained(model_dirs["siglip"], device="cpu", batch_size=0)
    with pytest.raises(LlmDitError, match="float16"):
        SiglipScorer.from_pretrained(model_dirs["siglip"], device="cpu", dtype="fp16")


def test_scorer_table_and_pickscore_registry_entry():
    from llm_dit.config import MetricsSettings
    from llm_dit.metrics.registry import METRICS, select_metrics

    assert {
        "siglip_path": SiglipScorer,
        "clip_path": ClipScorer,
        "pickscore_path": PickScoreScorer,
        "hpsv2_path": HpsV2Scorer,
    } == SCORERS
    spec = METRICS["pickscore"]
    assert (spec.kind, spec.setting, spec.higher_is_better) == ("text_image", "pickscore_path", True)
    assert PickScoreScorer.name == spec.name and PickScoreScorer.config_key == spec.setting
    with pytest.raises(LlmDitError, match=r"metric 'pickscore' needs local weights: set pickscore_path"):
        select_metrics(["pickscore"], MetricsSettings())
    _, notes = select_metrics(None, MetricsSettings())
    assert "pickscore (pickscore_path)" in notes[0]


@pytest.mark.usefixtures("no_loading")
def test_pickscore_directory_is_checked_before_the_pass(tmp_path: Path):
    from llm_dit.config import MetricsSettings
    from llm_dit.metrics.registry import select_metrics

    with pytest.raises(LlmDitError, match=r"PickScore \(CLIP\) model directory does not exist; set .* pickscore_path"):
        select_metrics(["pickscore"], MetricsSettings(pickscore_path=str(tmp_path / "nowhere")))


def test_hpsv2_without_its_setting_names_it():
    """HPSv2.1 is a metric like PickScore (its conversion and numbers: tests/test_hpsv2.py): unset, it names its
    setting; in the default set it is listed among the metrics whose weights are not configured."""
    from llm_dit.config import MetricsSettings
    from llm_dit.metrics.registry import UNAVAILABLE, select_metrics

    assert "hpsv2" not in UNAVAILABLE
    with pytest.raises(LlmDitError, match=r"metric 'hpsv2' needs local weights: set hpsv2_path") as excinfo:
        select_metrics(["hpsv2"], MetricsSettings())
    assert "\n" not in str(excinfo.value)
    _, notes = select_metrics(None, MetricsSettings())
    assert "hpsv2 (hpsv2_path)" in notes[0]

"""The conditioning sources beside the Qwen3-4B text encoder (issue 12), end to end on the built-in tiny models.

``conditioning = "vl"`` (tiny Qwen3-VL) and ``"embedding"`` (tiny Qwen3-Embedding), their run parameters, the PNG
record, ablation with source parameters as axes, and the ``caption``, ``reference-stats`` and ``embed-stats``
commands. The bad inputs of these parameters are rows of tests/test_bad_input.py.

The tiny twins fit only the built-in tiny Z-Image (an unset ``[vl]``/``[embedding] model_path`` with any other
checkpoint is refused), so unlike the other CLI tests these runs use the cached tiny model (no ``--model-path``:
``cache_root()``, built on first use), never the session's ``tiny_checkpoint``, except ``reference-stats``, which
needs no source and writes its cache to a private ``LLM_DIT_CACHE``. The pipeline tests share one
:class:`LlmDitPipeline` (module fixture) through the Python API; every image is 64x64 in 2 steps.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from bounds import EPS32, EPS64, assert_bit_equal, assert_within_rounding, count_reductions, worst_case
from cli_helpers import flat, forbid_model_loading, run
from llm_dit.conditioning import reference_stats
from llm_dit.conditioning.embeddings import style_delta, weighted_sum
from llm_dit.constants import DEFAULT_CAPTION_PROMPT, DEFAULT_EMBEDDING_TASK
from llm_dit.experiments.store import ResultsStore, load_results
from llm_dit.generation.image import read_record
from llm_dit.generation.pipeline import GenerationResult, LlmDitPipeline
from llm_dit.generation.request import GenerationRequest
from llm_dit.models import checkpoint
from llm_dit.models.sources import tiny_source_name

pytestmark = pytest.mark.usefixtures("cached_tokenizer")

PROMPT = "a cat on a mat"
SMALL: dict[str, Any] = {"width": 64, "height": 64, "steps": 2, "seed": 7}
SMALL_ARGS = ["--width", "64", "--height", "64", "--steps", "2"]
SMALL_SETS = ["--set", "width=64", "--set", "height=64", "--set", "steps=2"]
SUMMARY_RE = re.compile(r"(\d+) done, (\d+) skipped \(already done\), (\d+) failed")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two reference images of different sizes (random pixels, seeded): ref.png 64x64, ref2.png
    64 wide x 48 high."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(12)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / "ref.png")
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "ref2.png")
    return folder


@pytest.fixture(scope="module")
def pipe() -> Iterator[LlmDitPipeline]:
    """The built-in tiny pipeline with its tiny VL and embedding twins (weights load on first use)."""
    yield LlmDitPipeline.from_pretrained(None)


def request(**params: Any) -> GenerationRequest:
    return GenerationRequest.build(PROMPT, **{**SMALL, **params})


def one(pipe: LlmDitPipeline, req: GenerationRequest) -> GenerationResult:
    """One image in a batch of its own (so two such images are the same computation when their inputs are)."""
    (result,) = pipe.generate_batch([req])
    return result


# ------------------------------------------------------------------------------------ 1. generate through the CLI


def test_generate_with_a_vl_source_from_the_cli_without_a_config(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(images)  # vl_image as a user types it: relative to the working directory
    out = tmp_path / "vl.png"
    sets = ["--set", "conditioning=vl", "--set", "vl_image=ref.png", "--set", "vl_alpha=0.3"]
    rc, stdout, err = run(capsys, "generate", PROMPT, *sets, *SMALL_ARGS, "-o", out)
    assert rc == 0, err
    assert stdout == "" and f"wrote {out}" in flat(err)
    with Image.open(out) as img:
        assert (img.format, img.size) == ("PNG", (64, 64))
    record = read_record(out)
    assert record["conditioning"] == "vl"
    assert record["source_model"] == tiny_source_name("vl") and record["source_model"].startswith("tiny-vl-")
    settings = record["conditioning_settings"]
    assert settings["conditioning"] == "vl" and settings["vl_image"] == ["ref.png"]
    assert (settings["vl_layer"], settings["vl_token_mode"], settings["vl_blend"]) == (-2, "full", "linear")
    assert settings["vl_alpha"] == 0.3
    assert settings["embedding_format"] is None  # the embedding source's settings are inert for vl
    (vl_pass,) = record["source_passes"]["main"]
    assert vl_pass["images"] == ["ref.png"]
    assert vl_pass["image_sha256"] == [sha256(images / "ref.png")]
    assert (vl_pass["layer"], vl_pass["token_mode"], vl_pass["text"]) == (-2, "full", PROMPT)
    (image_tokens,) = vl_pass["image_token_counts"]
    assert isinstance(image_tokens, int) and image_tokens > 0
    # full mode keeps every row: the text run's rows (the same Qwen3 vocabulary and chat template around the
    # prompt) plus the image span, its pads and two markers
    assert vl_pass["rows"] == vl_pass["token_count"] == record["token_count"] + image_tokens + 2
    assert vl_pass["formatted_text"].count("<|vision_start|>") == 1 and PROMPT in vl_pass["formatted_text"]
    # vl_alpha 0.3 < 1: the text was encoded and mixed in (linear: the first min(text, VL) rows)
    assert record["formatted_prompt"] is not None and record["token_count"] > 0
    assert record["embedding_length"] == record["length_before_cap"] == min(record["token_count"], vl_pass["rows"])
    assert record["devices"]["vl"].startswith("cpu/")


@pytest.mark.parametrize(("alpha", "loads"), [("1", 0), ("0.5", 1)])
def test_generate_loads_qwen3_4b_only_where_text_is_mixed_in(
    images: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    alpha: str,
    loads: int,
) -> None:
    """A source alone (vl_alpha 1) never loads the text encoder's weights; a mix does."""
    monkeypatch.chdir(images)
    calls: list[int] = []
    real = checkpoint.load_text_encoder

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, "load_text_encoder", counted)
    sets = ["--set", "conditioning=vl", "--set", "vl_image=ref.png", "--set", f"vl_alpha={alpha}"]
    rc, _, err = run(capsys, "generate", PROMPT, *sets, *SMALL_ARGS, "-o", tmp_path / "a.png")
    assert rc == 0, err
    assert len(calls) == loads


def test_a_vl_input_over_the_cap_is_refused_before_any_model_loads_without_a_long_prompt_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2048^2 image is 4096 tokens: with long_prompt_mode none that cannot fit 1504 rows, said before loading."""
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (2048, 2048), (5, 6, 7)).save(tmp_path / "big.png")
    forbid_model_loading(monkeypatch)
    monkeypatch.setattr("llm_dit.models.vl.load_vl", lambda *a, **k: pytest.fail("the VL model was loaded"))
    sets = ["--set", "conditioning=vl", "--set", "vl_image=big.png", "--set", "long_prompt_mode=none"]
    rc, _, err = run(capsys, "generate", PROMPT, *sets, *SMALL_ARGS, "-o", tmp_path / "a.png")
    assert rc != 0 and "4096 image tokens" in flat(err) and "over the caption cap of 1504" in flat(err)
    assert not (tmp_path / "a.png").exists()
    # the image pads alone are still over the cap
    rc, _, err = run(capsys, "generate", PROMPT, *sets, "--set", "vl_token_mode=image_no_markers", *SMALL_ARGS)
    assert rc != 0 and "4096 rows" in flat(err)


# ------------------------------------------------------------------------------------------ 2. vl_alpha = 0


def test_vl_alpha_zero_makes_the_text_runs_image_bit_for_bit(pipe: LlmDitPipeline, images: Path) -> None:
    """At alpha 0 the mix returns the text features themselves: the same DiT computation as a plain text run."""
    text = one(pipe, request())
    vl0 = one(pipe, request(conditioning="vl", vl_image=str(images / "ref.png"), vl_alpha=0.0))
    assert_bit_equal(vl0.image, text.image)
    assert vl0.record["conditioning"] == "vl" and vl0.record["conditioning_settings"]["vl_alpha"] == 0.0
    assert vl0.record["source_passes"]["main"][0]["image_sha256"] == [sha256(images / "ref.png")]
    assert vl0.record["embedding_length"] == text.record["embedding_length"]


# ---------------------------------------------------------------------------- 3. global normalisation is invisible


@pytest.mark.numerics
def test_global_normalisation_is_a_scale_that_the_dits_rmsnorm_removes(pipe: LlmDitPipeline, images: Path) -> None:
    """vl_normalize=global multiplies the source features by one positive constant (checked exactly at the feature
    level), and the DiT reads captions through RMSNorm first, so the image moves only by RMSNorm's eps and rounding.

    diffusers' ZImageTransformer2DModel: ``cap_embedder = Sequential(RMSNorm(cap_feat_dim, eps=norm_eps),
    Linear(...))``, applied to the caption rows before anything else reads them (padding rows are replaced by
    ``cap_pad_token`` after it). RMSNorm(x) = x * rsqrt(mean(x^2) + eps) * w per row, so for a row of mean square
    m and a scale c > 0, RMSNorm(c x) / RMSNorm(x) = sqrt((m + eps) / (m + eps / c^2)) exactly: computed below per
    row (delta, ~1e-7 here: m >= 26 against eps 1e-5), the only difference the exact computation sees.

    Bound: each float32 run is within eps32 * factor * max|image| of its exact value (tests/bounds.py: factor =
    the reduction lengths counted on the run by count_reductions); the exact values of the two runs differ by a
    relative input perturbation of delta plus the scale's own rounding (eps32 / 2 per element), which the same
    first-order budget charges as (delta / eps32 + 1/2) more terms. So |A - B| <= eps32 * (2 factor + delta /
    eps32 + 1/2) * max|A|. Measured: ~2.5e-6 against a bound of ~1e-2; the text run's image is ~0.4 away.
    """
    ref = str(images / "ref.png")
    plain_req = request(conditioning="vl", vl_image=ref, vl_alpha=1.0, vl_normalize="none")
    scaled_req = request(conditioning="vl", vl_image=ref, vl_alpha=1.0, vl_normalize="global")
    plain_f, scaled_f = pipe.caption_features([plain_req, scaled_req])
    x = plain_f.embeddings
    assert x.dtype == torch.float32
    target = scaled_f.record["normalize_target_std"]
    assert target == scaled_f.record["reference_stats"]["global_std"] > 0  # Qwen3-4B's std at the same layer
    assert scaled_f.record["reference_stats"]["layer"] == -2
    # Feature level: exactly x * (target / std(x)) (population std over all values, in float32).
    scale = target / float(x.std(correction=0))
    assert_bit_equal(scaled_f.embeddings, x * scale)
    assert "normalize_target_std" not in plain_f.record

    transformer = pipe.transformer
    norm, linear = transformer.cap_embedder
    assert type(norm).__name__ == "RMSNorm" and isinstance(linear, nn.Linear)
    m = x.double().pow(2).mean(dim=-1)
    eps = float(norm.eps)
    delta = (torch.sqrt((m + eps) / (m + eps / scale**2)) - 1).abs().max().item()
    assert delta < EPS32  # below one float32 rounding: the eps term is invisible at this scale

    with count_reductions(transformer) as dit, count_reductions(pipe.vae) as vae:
        plain = one(pipe, plain_req)
    scaled = one(pipe, scaled_req)
    factor = dit.total + vae.total
    assert_within_rounding(scaled.image, plain.image, 2 * factor + delta / EPS32 + 0.5)
    assert scaled.record["normalize_target_std"] == target
    assert scaled.record["conditioning_settings"]["vl_normalize"] == "global"


# ------------------------------------------------------------------------------------------ 4. embedding source


def test_embedding_formats_give_different_features_and_fill_mode_pads(pipe: LlmDitPipeline) -> None:
    formats = ("raw", "chat", "instruction")
    features = pipe.caption_features([request(conditioning="embedding", embedding_format=f) for f in formats])
    facts = {f: composed.record["source_passes"]["main"][0] for f, composed in zip(formats, features, strict=True)}
    assert [facts[f]["prompt_format"] for f in formats] == list(formats)
    assert facts["raw"]["formatted_text"] == PROMPT
    assert facts["chat"]["formatted_text"] == f"<|im_start|>user\n{PROMPT}<|im_end|>\n<|im_start|>assistant\n"
    assert facts["instruction"]["formatted_text"] == f"Instruct: {DEFAULT_EMBEDDING_TASK}\nQuery:{PROMPT}"
    assert facts["instruction"]["instruction"] == DEFAULT_EMBEDDING_TASK and facts["chat"]["instruction"] is None
    rows = {f: composed.embeddings for f, composed in zip(formats, features, strict=True)}
    for f in formats:
        assert rows[f].shape == (facts[f]["rows"], pipe.cap_feat_dim)
        assert features[formats.index(f)].record["conditioning_settings"]["embedding_format"] == f
    # raw is the bare prompt; chat wraps it in the template; instruction prefixes the task: three lengths
    assert rows["raw"].shape[0] < rows["chat"].shape[0] < rows["instruction"].shape[0]

    chat = rows["chat"]
    padded_req = request(conditioning="embedding", fill_mode="pad_end_zero", target_length=40)
    (padded_f,) = pipe.caption_features([padded_req])
    assert_bit_equal(padded_f.embeddings[: chat.shape[0]], chat)
    assert torch.count_nonzero(padded_f.embeddings[chat.shape[0] :]) == 0
    padded = one(pipe, padded_req)
    assert padded.record["conditioning"] == "embedding"
    assert padded.record["source_model"] == tiny_source_name("embedding")
    assert (padded.record["length_before_cap"], padded.record["embedding_length"]) == (chat.shape[0], 40)
    assert padded.record["token_count"] is None  # no text was encoded

    # fill_mode on a plain text run: the prompt's features, then zero rows up to 40
    text_req = request(fill_mode="pad_end_zero", target_length=40)
    (text_f,) = pipe.caption_features([text_req])
    (plain_f,) = pipe.caption_features([request()])
    length = plain_f.embeddings.shape[0]
    assert length < 40
    assert_bit_equal(text_f.embeddings[:length], plain_f.embeddings)
    assert torch.count_nonzero(text_f.embeddings[length:]) == 0
    text = one(pipe, text_req)
    assert text.record["conditioning"] == "prompt" and text.record["source_model"] is None
    assert (text.record["length_before_cap"], text.record["embedding_length"]) == (text.record["token_count"], 40)
    assert text.record["conditioning_settings"]["fill_mode"] == "pad_end_zero"

    # fill_mode on precomputed features (--embeddings): the given rows, then zero rows up to 40
    given = plain_f.embeddings.clone()
    brought_req = GenerationRequest.build(embeddings=given, fill_mode="pad_end_zero", target_length=40, **SMALL)
    (brought_f,) = pipe.caption_features([brought_req])
    assert_bit_equal(brought_f.embeddings[:length], given)
    assert brought_f.embeddings.shape[0] == 40 and torch.count_nonzero(brought_f.embeddings[length:]) == 0
    brought = one(pipe, brought_req)
    assert (brought.record["length_before_cap"], brought.record["embedding_length"]) == (length, 40)
    assert brought.record["conditioning"] == "precomputed embeddings" and brought.record["embeddings_fingerprint"]


# ------------------------------------------------------------------------------- 5. style delta, multi-reference


def test_style_delta_and_multi_reference_record_their_passes(pipe: LlmDitPipeline, images: Path) -> None:
    ref, ref2 = images / "ref.png", images / "ref2.png"
    style_req = request(conditioning="vl", style_image=str(ref), vl_alpha=0.5)
    multi_req = request(conditioning="vl", vl_image=[str(ref), str(ref2)], vl_image_weights=[0.7, 0.3])
    style_f, multi_f = pipe.caption_features([style_req, multi_req])

    passes = style_f.record["source_passes"]
    assert set(passes) == {"style", "neutral"}
    (style_pass,), (neutral_pass,) = passes["style"], passes["neutral"]
    assert (style_pass["images"], style_pass["image_sha256"]) == ([str(ref)], [sha256(ref)])
    assert (neutral_pass["images"], neutral_pass["image_sha256"]) == (["mid-gray"], [None])  # default: gray, same size
    assert style_pass["image_token_counts"] == neutral_pass["image_token_counts"]
    rows = pipe.sources.passes(style_req)
    expected = style_delta(style_f.text.embeddings, rows["style"][0].rows, rows["neutral"][0].rows, 0.5)
    assert_bit_equal(style_f.embeddings, expected)  # text + alpha (VL(style) - VL(neutral))

    (main,) = multi_f.record["source_passes"].values()
    assert [p["images"] for p in main] == [[str(ref)], [str(ref2)]]  # one pass per image
    assert [p["image_sha256"] for p in main] == [[sha256(ref)], [sha256(ref2)]]
    assert all(len(p["image_token_counts"]) == 1 for p in main)
    rows = pipe.sources.passes(multi_req)["main"]
    assert_bit_equal(multi_f.embeddings, weighted_sum([p.rows for p in rows], [0.7, 0.3]))
    assert multi_f.record["conditioning_settings"]["vl_image_weights"] == [0.7, 0.3]

    style, multi = pipe.generate_batch([style_req, multi_req])
    assert set(style.record["source_passes"]) == {"style", "neutral"}
    assert len(multi.record["source_passes"]["main"]) == 2
    assert style.record["conditioning_settings"]["style_image"] == str(ref)
    assert style.record["embedding_length"] == style.record["token_count"]  # the delta keeps the text's rows


# --------------------------------------------------------------------------------- 6. ablation with source axes

EXPERIMENT = """
name = "vl_mix"
description = "vl_alpha x fill_mode on the tiny models"
seeds = [1]

[prompts]
ids = ["animal_001"]

[base]
conditioning = "vl"
vl_image = "{image}"
target_length = 40

[[axes]]
name = "vl_alpha"
values = [0, 0.5, 1]

[[axes]]
name = "fill_mode"
values = ["pad_end_zero", "pad_end_mean"]
"""


def summary_of(err: str) -> tuple[int, int, int]:
    match = SUMMARY_RE.search(flat(err))
    assert match, f"no summary line in: {err!r}"
    return int(match[1]), int(match[2]), int(match[3])


def test_ablation_over_vl_alpha_and_fill_mode_runs_stores_and_resumes(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    exp = tmp_path / "vl_mix.toml"
    exp.write_text(EXPERIMENT.format(image=images / "ref.png"), encoding="utf-8")
    out = tmp_path / "results"
    argv = ["ablate", "--output-dir", str(out), "--experiment-file", str(exp), *SMALL_SETS]
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    assert summary_of(err) == (6, 0, 0)

    frame = load_results(out, "vl_mix")
    assert set(frame["status"]) == {"done"} and len(frame) == 6
    pairs = list(zip(frame["vl_alpha"], frame["fill_mode"], strict=True))
    assert sorted(pairs) == sorted((a, f) for a in ("0", "0.5", "1") for f in ("pad_end_zero", "pad_end_mean"))
    with ResultsStore(out) as store:
        assert set(store.status("vl_mix").values()) == {"done"}
    folder = out / "vl_mix"
    first = {}
    for name in frame["output_path"]:
        record = read_record(folder / name)
        settings = record["conditioning_settings"]
        assert settings["conditioning"] == "vl"
        assert settings["vl_alpha"] == float(record["variables"]["vl_alpha"])
        assert settings["fill_mode"] == record["variables"]["fill_mode"]
        assert (settings["target_length"], record["embedding_length"]) == (40, 40)
        assert record["source_passes"]["main"][0]["image_sha256"] == [sha256(images / "ref.png")]
        # alpha 1: the source alone (the text is not encoded); below 1 the text is mixed in
        assert (record["token_count"] is None) == (settings["vl_alpha"] == 1.0)
        first[name] = (folder / name).stat().st_mtime_ns

    # The re-run resumes: nothing is generated, no model loads, no image is rewritten.
    forbid_model_loading(monkeypatch)
    from llm_dit.conditioning.vl_encoder import VLEncoder

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the VL model was loaded on a resume with nothing to do")

    monkeypatch.setattr(VLEncoder, "from_pretrained", boom)
    rc, _, err = run(capsys, *argv)
    assert rc == 0, err
    assert summary_of(err) == (0, 6, 0)
    assert {name: (folder / name).stat().st_mtime_ns for name in first} == first


# ------------------------------------------------------------------------------------------------- 7. caption


def test_caption_is_seeded_and_writes_json(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(images)
    rc, stdout, err = run(capsys, "caption", "ref.png", "--seed", "3", "--max-new-tokens", "24", "--format", "json")
    assert rc == 0, err
    (printed,) = json.loads(stdout)
    assert printed["image"] == str(images / "ref.png") and printed["seed"] == 3
    assert printed["image_sha256"] == sha256(images / "ref.png")
    assert isinstance(printed["caption"], str) and printed["caption"]

    caps = tmp_path / "caps.json"
    rc, _, err = run(capsys, "caption", "ref.png", "--seed", "3", "--max-new-tokens", "24", "--output", caps)
    assert rc == 0, err
    data = json.loads(caps.read_text(encoding="utf-8"))
    assert (data["vl_model"], data["prompt"], data["max_new_tokens"]) == ("tiny", DEFAULT_CAPTION_PROMPT, 24)
    assert data["captions"] == [printed]  # same image, same seed: the same caption


# ----------------------------------------------------------------------------------------- 8. reference-stats


@pytest.mark.terminal
def test_reference_stats_prints_a_table_and_caches_it(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_DIT_CACHE", str(tmp_path / "cache"))  # an empty cache: the first call computes
    monkeypatch.setenv("COLUMNS", "200")
    argv = ["reference-stats", "--layer", "-2", "--model-path", str(tiny_checkpoint)]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    assert "Qwen3-4B reference statistics (prompt library)" in stdout
    header = next(line for line in stdout.splitlines() if "global_std" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "layer",
        "prompts",
        "tokens",
        "global_std",
        "median_dim_std",
        "top_dims",
    ]
    (row,) = [line for line in stdout.splitlines() if line.startswith("│ -2 ")]
    texts = reference_stats.reference_texts()
    assert [cell.strip() for cell in row.strip("│").split("│")][1] == str(len(texts))

    from llm_dit.config import EncoderSettings

    template = reference_stats.template_key(EncoderSettings())
    path = reference_stats.reference_stats_path(checkpoint.fingerprint(tiny_checkpoint), -2, template, texts)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    cached = reference_stats.load_reference_stats(path)
    stamp = path.stat().st_mtime_ns

    def recompute(*args: object, **kwargs: object) -> None:
        raise AssertionError("reference statistics recomputed although cached")

    monkeypatch.setattr(reference_stats, "compute_reference_stats", recompute)
    rc, stdout, err = run(capsys, *argv, "--format", "json")
    assert rc == 0, err
    (again,) = json.loads(stdout)
    assert (again["layer"], again["prompts"], again["tokens"]) == (-2, len(texts), cached.token_count)
    assert again["global_std"] == cached.global_std
    assert f"{cached.global_std:.4g}" in row
    assert path.stat().st_mtime_ns == stamp


# ---------------------------------------------------------------------------------------------- 9. embed-stats


def test_embed_stats_compares_text_with_vl_conditions(
    pipe: LlmDitPipeline, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """embed-stats takes conditioning parameters in a condition: the VL rows it measures are the pipeline's."""
    ref = images / "ref.png"
    vl, text_only = f"conditioning=vl,vl_image={ref}", f"conditioning=vl,vl_image={ref},vl_token_mode=text_only"
    out = tmp_path / "stats.json"
    argv = ["embed-stats", "--model", "tiny", "--prompt", PROMPT, "-c", "default", "-c", vl, "-c", text_only]
    rc, _, err = run(capsys, *argv, "-o", out, "--format", "json")
    assert rc == 0, err
    data = json.loads(out.read_text(encoding="utf-8"))
    assert data["reference"] == "default"
    assert data["conditions"][1] == {
        "label": vl,
        "overrides": {},
        "conditioning": {"conditioning": "vl", "vl_image": str(ref)},
    }
    by = {row["condition"]: row for row in data["rows"]}
    assert by["default"]["token_cosine"] == 1.0 and by["default"]["pooled_cosine"] == 1.0

    (text_f,) = pipe.caption_features([request()])
    assert by["default"]["tokens"] == text_f.embeddings.shape[0]
    for label, mode in ((vl, "full"), (text_only, "text_only")):
        (features,) = pipe.caption_features([request(conditioning="vl", vl_image=str(ref), vl_token_mode=mode)])
        x = features.embeddings.double()
        row = by[label]
        assert row["tokens"] == x.shape[0] and row["aligned_tokens"] == min(x.shape[0], text_f.embeddings.shape[0])
        # The same tiny weights and input in both processes' pipelines: the same float32 features; the statistics
        # are float64 reductions of <= L * D terms.
        assert row["max_abs"] == x.abs().max().item()
        assert row["mean_token_norm"] == pytest.approx(x.norm(dim=1).mean().item(), rel=worst_case(x.numel(), EPS64))
    assert by[text_only]["tokens"] < by[vl]["tokens"]  # text_only drops the image span


def test_the_reference_statistics_template_is_every_setting_that_shapes_the_rows() -> None:
    """Settings that change Qwen3-4B's rows of the reference texts key their statistics; the layer choice does not."""
    from llm_dit.config import EncoderSettings

    base = reference_stats.template_key(EncoderSettings())
    for change in (
        {"long_prompt_mode": "pool"},
        {"padding": "longest"},
        {"system_prompt": "s"},
        {"think_block": "empty"},
        {"max_text_tokens": 64},
    ):
        assert reference_stats.template_key(EncoderSettings(**change)) != base, change
    assert reference_stats.template_key(EncoderSettings(hidden_layer=-6)) == base

"""Qwen3-4B vs Qwen3-Embedding-4B statistics (conditioning/embedding_comparison.py) and ``llm-dit
compare-embedding-models``.

The pure parts against hand-computed values (conditions, instruction names, content alignment on hand-made token
spans and on the real tokenizer, the statistics on 2x3 and 3x3 tensors); the comparison on the tiny models against
a direct float64 computation from the two encoders' own outputs, its rows located by the text encoder's own
prefix/suffix lengths; the command end to end, and its refusals before any model loads (their import-free side is
in tests/test_bad_input.py).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from bounds import EPS64, worst_case
from cli_helpers import assert_user_error, flat, forbid_model_loading, run
from llm_dit.conditioning.embedding_comparison import (
    DEFAULT_COMPARISON_LAYERS,
    DEFAULT_QWEN3_LAYER,
    INSTRUCTIONS,
    ROW_COLUMNS,
    SEED_T2I_TASK,
    SUMMARY_COLUMNS,
    ComparisonCondition,
    align_content,
    check_prompts,
    compare_embedding_models,
    content_indices,
    embedding_prompt,
    pair_statistics,
    plan_conditions,
    resolve_instructions,
)
from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
from llm_dit.conditioning.text_encoder import ZImageTextEncoder
from llm_dit.conditioning.tokenization import token_encoder
from llm_dit.constants import DEFAULT_EMBEDDING_TASK, EMBEDDING_FORMATS
from llm_dit.errors import LlmDitError
from llm_dit.models.embedding_model import EMBEDDING_QUERY_TASK, tiny_embedding_path

pytestmark = [pytest.mark.usefixtures("cached_tokenizer"), pytest.mark.numerics]

HIDDEN = 32
# "A cat" in the query format tokenizes as ... "Query", ":A", " cat": the first word merges with the colon. The
# Chinese prompt's first characters do not merge (":" stays alone), and its characters are multi-byte.
PROMPTS = ["A cat", "一只猫 in a neon-lit alley"]


@pytest.fixture(scope="module")
def encoders() -> tuple[ZImageTextEncoder, EmbeddingEncoder]:
    """The cached tiny model's Qwen3-4B and the tiny embedding twin (weights load on first use)."""
    text = ZImageTextEncoder.from_pretrained(None, device="cpu", torch_dtype="fp32")
    return text, EmbeddingEncoder.from_pretrained(None, device="cpu", torch_dtype="fp32")


# -- conditions and instructions ---------------------------------------------------------------------------------


def test_instruction_names_and_defaults():
    assert INSTRUCTIONS == {
        "t2i": "Generate an embedding for text-to-image synthesis",  # seed 000's
        "query": EMBEDDING_QUERY_TASK,  # the released config_sentence_transformers.json's query task
        "default": DEFAULT_EMBEDDING_TASK,
    }
    assert resolve_instructions(None) == [("t2i", SEED_T2I_TASK), ("query", EMBEDDING_QUERY_TASK)]
    assert resolve_instructions(["query", "Find the photo", "default", "Draw it"]) == [
        ("query", EMBEDDING_QUERY_TASK),
        ("task1", "Find the photo"),
        ("default", DEFAULT_EMBEDDING_TASK),
        ("task2", "Draw it"),
    ]
    assert resolve_instructions([]) == []
    with pytest.raises(LlmDitError, match=r"instruction ' ' is empty; give a name \(t2i, query, default\)"):
        resolve_instructions([" "])
    with pytest.raises(LlmDitError, match="is given twice"):
        resolve_instructions(["t2i", SEED_T2I_TASK])


def test_conditions_are_layer_by_format_with_one_instruction_row_each():
    tasks = resolve_instructions(None)
    conditions = plan_conditions([-2, -8, -2], ["raw", "instruction", "chat"], tasks, 36)
    assert [c.label for c in conditions] == [
        "L-2/raw",
        "L-2/instruction:t2i",
        "L-2/instruction:query",
        "L-2/chat",
        "L-8/raw",
        "L-8/instruction:t2i",
        "L-8/instruction:query",
        "L-8/chat",
    ]
    assert conditions[1] == ComparisonCondition(-2, "instruction", "t2i", SEED_T2I_TASK)
    assert conditions[0].instruction is None and conditions[0].to_dict()["format"] == "raw"
    assert DEFAULT_COMPARISON_LAYERS == (-1, -2, -4, -8, -16)
    # The command's defaults (written out there, so --help imports nothing) are these.
    import inspect

    from llm_dit.cli.embedding import compare_embedding_models_cmd

    defaults = {k: p.default for k, p in inspect.signature(compare_embedding_models_cmd).parameters.items()}
    assert tuple(int(x) for x in defaults["embedding_layers"].split(",")) == DEFAULT_COMPARISON_LAYERS
    assert defaults["qwen3_layer"] == DEFAULT_QWEN3_LAYER and defaults["formats"] == ",".join(EMBEDDING_FORMATS)


@pytest.mark.parametrize(
    ("layers", "formats", "needle"),
    [
        ([], ["chat"], "at least one embedding layer"),
        ([-2], [], "at least one prompt format"),
        ([-2, 37], ["chat"], r"hidden layer 37 is out of range for a 36-layer encoder; use -37\.\.36"),
        ([-38], ["chat"], r"hidden layer -38 is out of range"),
        ([-2], ["chat", "query"], "prompt format 'query' is not valid; use chat, raw, instruction"),
    ],
)
def test_bad_conditions_are_refused(layers, formats, needle):
    with pytest.raises(LlmDitError, match=needle):
        plan_conditions(layers, formats, resolve_instructions(None), 36)


def test_instruction_format_needs_an_instruction():
    with pytest.raises(LlmDitError, match="needs at least one instruction"):
        plan_conditions([-2], ["instruction"], [], 36)
    assert [c.label for c in plan_conditions([-2], ["chat"], [], 36)] == ["L-2/chat"]


@pytest.mark.parametrize("fmt", EMBEDDING_FORMATS)
@pytest.mark.parametrize("text", [*PROMPTS, "", "two\nlines"])
def test_embedding_prompt_is_the_encoders_format(fmt, text):
    for task in (None, SEED_TASK := SEED_T2I_TASK):
        formatted, start = embedding_prompt(text, fmt, task)
        assert formatted == EmbeddingEncoder.format_prompt(text, fmt, task)
        assert formatted[start : start + len(text)] == text
    assert embedding_prompt(text, "instruction", SEED_TASK)[1] == len(f"Instruct: {SEED_TASK}\nQuery:")
    assert embedding_prompt(text, "chat")[1] == len("<|im_start|>user\n")


# -- content alignment -------------------------------------------------------------------------------------------


def test_content_indices_keep_whole_tokens_inside_the_span():
    # "<s>ab cd</s>" with the content "ab cd" at 3..8; a token straddling 8 and an empty appended token
    offsets = [(0, 3), (3, 5), (5, 8), (8, 12), (7, 9), (0, 0)]
    assert content_indices(offsets, 3, 8) == [1, 2]


def test_align_content_pairs_the_same_token_over_the_same_characters():
    """Hand-made: the prompt "xy z" (4 characters). The reference reads "P:" + prompt (tokens 'P', ':', 'xy', ' z');
    the other reads "Q:" + prompt with ':x' merged ('Q', ':x', 'y', ' z') and a character split into two byte
    tokens of one span."""
    ref_ids, ref_offsets = [1, 2, 10, 11], [(0, 1), (1, 2), (2, 4), (4, 6)]
    ids, offsets = [3, 4, 12, 11], [(0, 1), (1, 3), (3, 4), (4, 6)]
    pairs, n_ref, n = align_content(ref_ids, ref_offsets, 2, ids, offsets, 2, 4)
    assert (pairs, n_ref, n) == ([(3, 3)], 2, 2)  # only ' z' is the same token at the same characters
    # Same span, other id: not paired.
    assert align_content([10, 11], [(0, 2), (2, 4)], 0, [10, 99], [(0, 2), (2, 4)], 0, 4)[0] == [(0, 0)]
    # One character as two byte tokens (both with its span), twice in a row: the n-th with the n-th.
    ref = ([7, 8, 7, 8], [(0, 1), (0, 1), (1, 2), (1, 2)])
    other = ([5, 7, 8, 7, 8], [(0, 3), (3, 4), (3, 4), (4, 5), (4, 5)])
    assert align_content(*ref, 0, *other, 3, 2) == ([(0, 1), (1, 2), (2, 3), (3, 4)], 4, 4)


def test_alignment_with_the_real_tokenizer(encoders):
    encode = token_encoder(encoders[1].tokenizer)  # the released tokenizer (it appends <|endoftext|>, span (0, 0))
    chat, chat_start = embedding_prompt("A cat", "chat")
    query, query_start = embedding_prompt("A cat", "instruction", "x")
    ref_ids, ref_offsets = encode(chat)
    ids, offsets = encode(query)
    pairs, n_ref, n = align_content(ref_ids, ref_offsets, chat_start, ids, offsets, query_start, 5)
    assert (n_ref, n) == (2, 1)  # 'A', ' cat' against ' cat' (':A' crosses the prompt's start)
    assert [ref_ids[r] for r, _ in pairs] == [ids[o] for _, o in pairs] == [encode(" cat")[0][0]]
    raw, raw_start = embedding_prompt("A cat", "raw")
    assert align_content(ref_ids, ref_offsets, chat_start, *encode(raw), raw_start, 5)[1:] == (2, 2)


def test_check_prompts_refuses_ids_outside_the_embedding_vocabulary(encoders):
    encode = token_encoder(encoders[0].tokenizer)  # the light check reads Qwen3-4B's tokenizer: the same ids
    conditions = plan_conditions([-2], ["chat", "raw"], [], 36)
    check_prompts(PROMPTS, conditions, encode, 151665)
    with pytest.raises(LlmDitError, match=r"'a <think> cat' \(chat format\) has token ids \[151667\] outside"):
        check_prompts(["a <think> cat"], conditions, encode, 151665)


# -- the statistics --------------------------------------------------------------------------------------------


def test_pair_statistics_by_hand():
    """R = [[4,0,2],[0,2,2]] and O = [[2,0,6],[2,8,2]] (two rows: mean (a+b)/2, population std |a-b|/2), by hand:
    means (2,1,2) and (2,4,4): global cosine 16 / (3 * 6) = 8/9; centred (1/3,-2/3,1/3) and (-4/3,2/3,2/3):
    correlation -1/2. Stds (2,1,0) and (0,4,2), centred (1,0,-1) and (-2,2,0): -2 / (sqrt2 * sqrt8) = -1/2 (the
    mean of O against the std of R would give -sqrt3/2). All values: O = 2 x (a set with R's variance 17/9): std
    ratio 2. Rows: cos(r0, o0) = 20 / sqrt(20 * 40) = 1/sqrt2, cos(r1, o1) = 20 / sqrt(8 * 72) = 5/6, and
    cos(r0, o1) = 12 / sqrt(20 * 72) = 1/sqrt10."""
    ref = torch.tensor([[4.0, 0, 2], [0, 2, 2]])
    other = torch.tensor([[2.0, 0, 6], [2, 8, 2]])
    got = pair_statistics(ref, other, [(0, 0), (1, 1)])
    expected = {
        "global_cosine": 8 / 9,
        "mean_correlation": -0.5,
        "std_correlation": -0.5,
        "std_ratio": 2.0,
        "token_cosine": (1 / math.sqrt(2) + 5 / 6) / 2,
    }
    # float64 over at most 6 values: a mean, a variance and a 3-term dot each (first-order bound).
    tol = worst_case(4 * 6, EPS64)
    assert got == pytest.approx(expected, abs=tol)
    assert pair_statistics(ref, other, [(0, 1)])["token_cosine"] == pytest.approx(1 / math.sqrt(10), abs=tol)
    assert pair_statistics(ref, other, [])["token_cosine"] is None
    # A constant per-dimension vector has no correlation.
    flat_ref = torch.tensor([[1.0, 1, 1], [1, 1, 1]])
    stats = pair_statistics(flat_ref, other, [(0, 0)])
    assert stats["mean_correlation"] is None and stats["std_correlation"] is None and stats["std_ratio"] is None


# -- the comparison on the tiny models ---------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])


def expected_row(ref: Any, rows: torch.Tensor, ref_content: slice, content: slice) -> dict[str, Any]:
    """The statistics written out with torch's own float64 functions, on rows chosen by hand."""
    r, o = ref.embeddings.double(), rows.double()
    return {
        "global_cosine": float(_cos(r.mean(0), o.mean(0))),
        "mean_correlation": _corr(o.mean(0), r.mean(0)),
        "std_correlation": _corr(o.std(0, correction=0), r.std(0, correction=0)),
        "std_ratio": float(o.std(correction=0) / r.std(correction=0)),
        "token_cosine": float(_cos(o[content], r[ref_content]).mean()),
    }


# Each statistic: float64 sums of at most L * D terms (L < 32 rows, D = 32), a few in a row.
STAT_TOL = worst_case(4 * 32 * HIDDEN, EPS64)


@pytest.mark.parametrize("keep_eot", [False, True])
def test_comparison_equals_a_direct_computation(encoders, keep_eot):
    text, emb = encoders
    conditions = plan_conditions([-2, -8], list(EMBEDDING_FORMATS), resolve_instructions(["t2i"]), 36)
    report = compare_embedding_models(text, emb, PROMPTS, conditions, qwen3_layer=-6, keep_eot=keep_eot)
    assert [list(row) for row in report.rows] == [list(ROW_COLUMNS)] * len(PROMPTS) * len(conditions)
    reference = text.encode(PROMPTS, hidden_layer=-6)
    rows = {
        fmt: emb.encode_layers(PROMPTS, [-2, -8], prompt_format=fmt, instruction=SEED_T2I_TASK, keep_eot=keep_eot)
        for fmt in EMBEDDING_FORMATS
    }
    by = {(row["prompt_index"], row["condition"]): row for row in report.rows}
    eot = int(keep_eot)
    for p, prompt in enumerate(PROMPTS):
        ref = reference[p]
        ref_content = slice(ref.prefix_len, ref.length - ref.suffix_len)  # the encoder's own template location
        n_content = ref_content.stop - ref_content.start
        for c in conditions:
            got = by[(p, c.label)]
            other = rows[c.prompt_format][p][c.layer]
            length = other.shape[0]
            # chat: the same template as Qwen3-4B; raw: the prompt alone; instruction: "A cat" loses 'A' to ':A'.
            merged = int(c.prompt_format == "instruction" and prompt == "A cat")
            content = {
                "chat": slice(ref.prefix_len, length - ref.suffix_len - eot),
                "raw": slice(0, length - eot),
                "instruction": slice(length - eot - n_content + merged, length - eot),
            }[c.prompt_format]
            want = expected_row(ref, other, slice(ref_content.start + merged, ref_content.stop), content)
            stats = {k: got[k] for k in want}
            assert stats == pytest.approx(want, abs=STAT_TOL), (prompt, c.label)
            assert (got["tokens"], got["reference_tokens"]) == (length, ref.length)
            assert (got["aligned_tokens"], got["reference_content_tokens"]) == (n_content - merged, n_content)
            assert got["content_tokens"] == n_content - merged
            assert (got["alignment_note"] is None) == (not merged)
            assert (got["layer"], got["format"], got["instruction"]) == (c.layer, c.prompt_format, c.instruction_name)
    # The summary: means over the prompts, the alignment's counts summed.
    for entry in report.summary:
        own = [row for row in report.rows if row["condition"] == entry["condition"]]
        assert entry["prompts"] == len(PROMPTS) and list(entry) == list(SUMMARY_COLUMNS)
        for key in ("global_cosine", "std_ratio", "token_cosine", "tokens"):
            assert entry[key] == pytest.approx(sum(row[key] for row in own) / len(own), rel=worst_case(2, EPS64))
        assert entry["aligned_tokens"] == sum(row["aligned_tokens"] for row in own)


def test_report_json_holds_everything(encoders, tmp_path):
    text, emb = encoders
    conditions = plan_conditions([-2], ["chat", "instruction"], resolve_instructions(None), 36)
    report = compare_embedding_models(
        text, emb, PROMPTS[:1], conditions, models={"qwen3": {"fingerprint": "f"}}, settings={"x": 1}
    )
    data = json.loads(report.to_json(tmp_path / "r.json").read_text(encoding="utf-8"))
    assert data["reference"] == {"model": "Qwen3-4B", "layer": -2, "format": "chat"}
    assert [c["label"] for c in data["conditions"]] == ["L-2/chat", "L-2/instruction:t2i", "L-2/instruction:query"]
    assert data["conditions"][2]["instruction"] == EMBEDDING_QUERY_TASK
    assert data["rows"] == report.rows and data["summary"] == report.summary
    assert (data["models"], data["settings"], data["keep_eot"]) == ({"qwen3": {"fingerprint": "f"}}, {"x": 1}, False)
    assert data["columns"] == list(ROW_COLUMNS) and data["summary_columns"] == list(SUMMARY_COLUMNS)


def test_comparison_refuses_bad_input_before_encoding(encoders):
    text, emb = encoders
    conditions = plan_conditions([-2], ["chat"], [], 36)
    with pytest.raises(LlmDitError, match="non-empty list of prompt strings"):
        compare_embedding_models(text, emb, [], conditions)
    with pytest.raises(LlmDitError, match="at least one condition"):
        compare_embedding_models(text, emb, PROMPTS, [])
    with pytest.raises(LlmDitError, match="given twice"):
        compare_embedding_models(text, emb, PROMPTS, conditions * 2)
    with pytest.raises(LlmDitError, match="hidden_layer 99 is out of range"):
        compare_embedding_models(text, emb, PROMPTS, conditions, qwen3_layer=99)


# -- the command -----------------------------------------------------------------------------------------------


def test_command_prints_the_table_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "cmp.json"
    argv = ["compare-embedding-models", "--model", "tiny", "--prompts", "A cat,A mountain landscape"]
    argv += ["--prompt", "A red fox", "--embedding-layers", "-2,-6", "--qwen3-layer", "-3"]
    argv += ["--formats", "chat,instruction"]
    argv += ["--instruction", "t2i", "--instructions", "Find the picture", "-o", str(out)]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    labels = ["L-2/chat", "L-2/instruction:t2i", "L-2/instruction:task1", "L-6/chat", "L-6/instruction:t2i"]
    labels.append("L-6/instruction:task1")
    text = flat(stdout)
    assert "vs Qwen3-4B layer -3 (chat format): means over 3 prompts" in text
    assert all(label in text for label in labels)
    assert f"wrote {out}" in flat(err)
    data = json.loads(out.read_text(encoding="utf-8"))
    assert [c["label"] for c in data["conditions"]] == labels
    assert data["prompts"] == ["A red fox", "A cat", "A mountain landscape"]
    assert data["settings"]["embedding_layers"] == [-2, -6] and data["settings"]["qwen3_layer"] == -3
    assert data["settings"]["instructions"] == {"t2i": SEED_T2I_TASK, "task1": "Find the picture"}
    assert data["models"]["embedding"] == {
        "path": str(tiny_embedding_path()),
        "fingerprint": "tiny-embedding-v1-seed0",
        "tiny_twin": True,
    }
    assert len(data["rows"]) == 3 * len(labels) and len(data["models"]["qwen3"]["fingerprint"]) == 16


def test_command_summary_as_json_on_stdout(encoders, tmp_path, capsys, monkeypatch):
    """``--format json``: the summary on stdout, as in the file (the module's encoders stand in for the loads)."""
    for cls, built in zip((ZImageTextEncoder, EmbeddingEncoder), encoders, strict=True):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda *a, built=built, **k: built))
    out = tmp_path / "cmp.json"
    argv = ["compare-embedding-models", "--model", "tiny", "--prompt", "A cat", "--embedding-layers", "-1"]
    rc, stdout, err = run(capsys, *argv, "--formats", "raw", "--format", "json", "-o", str(out))
    assert rc == 0, err
    summary = json.loads(stdout)
    assert summary == json.loads(out.read_text(encoding="utf-8"))["summary"]
    assert [list(s) for s in summary] == [list(SUMMARY_COLUMNS)] and summary[0]["condition"] == "L-1/raw"
    rc, _, err = run(capsys, *argv, "--formats", "raw", "-o", str(out))  # the file exists: refused
    assert_user_error(rc, "", err, "already exists", "--overwrite")


def _wide_twin(tmp: Path) -> Path:
    """A copy of the tiny twin whose config says width 64 (weights are never read: the check is JSON only)."""
    folder = tmp / "wide"
    shutil.copytree(tiny_embedding_path(), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_size": 64}))
    return folder


def _real_checkpoint(tmp: Path) -> str:
    from llm_dit.models.tiny import tiny_checkpoint_path

    return str(tiny_checkpoint_path())  # a path given explicitly: the tiny twin no longer fits it


TINY = ["compare-embedding-models", "--model", "tiny", "--prompt", "A cat"]
REFUSALS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "output-txt": ([*TINY, "-o", "{tmp}/x.txt"], ("--output", "x.txt", ".json")),
    "format": (
        [*TINY, "--formats", "chat,query", "-o", "{tmp}/x.json"],
        ("--formats: 'query' is not a prompt format",),
    ),
    "no-format": ([*TINY, "--formats", ",", "-o", "{tmp}/x.json"], ("--formats: no prompt format given",)),
    "no-layer": ([*TINY, "--embedding-layers", "", "-o", "{tmp}/x.json"], ("at least one embedding layer",)),
    "layer": ([*TINY, "--embedding-layers", "-2,99", "-o", "{tmp}/x.json"], ("--embedding-layers", "99", "-37..36")),
    "layers-not-ints": ([*TINY, "--embedding-layers", "a,b", "-o", "{tmp}/x.json"], ("--embedding-layers 'a,b'",)),
    "qwen3-layer": ([*TINY, "--qwen3-layer", "40", "-o", "{tmp}/x.json"], ("--qwen3-layer", "40")),
    "instruction-without-format": (
        [*TINY, "--formats", "chat", "--instruction", "t2i", "-o", "{tmp}/x.json"],
        ("--instructions apply to the instruction format",),
    ),
    "empty-instruction": ([*TINY, "--instruction", "", "-o", "{tmp}/x.json"], ("is empty",)),
    "no-prompt": (["compare-embedding-models", "--model", "tiny", "-o", "{tmp}/x.json"], ("give prompts",)),
    "unknown-prompt-id": ([*TINY, "--prompt-ids", "animal_999", "-o", "{tmp}/x.json"], ("animal_999",)),
    "think": (
        ["compare-embedding-models", "--model", "tiny", "--prompt", "a <think> cat", "-o", "{tmp}/x.json"],
        ("token ids [151667]", "outside the embedding model's vocabulary"),
    ),
    "real-checkpoint": (
        ["compare-embedding-models", "--model-path", "{ck}", "--prompt", "A cat", "-o", "{tmp}/x.json"],
        ("--embedding-path DIR", "[default.embedding] model_path"),
    ),
    "missing-embedding-path": ([*TINY, "--embedding-path", "{tmp}/nowhere", "-o", "{tmp}/x.json"], ("nowhere",)),
    "width": ([*TINY, "--embedding-path", "{wide}", "-o", "{tmp}/x.json"], ("64 wide", "text encoder 32")),
}


@pytest.mark.parametrize("case", REFUSALS)
def test_bad_input_is_refused_before_any_model_loads(case, tmp_path, capsys, monkeypatch):
    forbid_model_loading(monkeypatch)
    for cls in (EmbeddingEncoder, ZImageTextEncoder):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("a model was built")))
    argv, needles = REFUSALS[case]
    places = {"tmp": str(tmp_path), "ck": _real_checkpoint(tmp_path) if case == "real-checkpoint" else ""}
    if case == "width":
        places["wide"] = str(_wide_twin(tmp_path))
    rc, out, err = run(capsys, *(a.format(**places) for a in argv))
    assert_user_error(rc, out, err, *needles)
    assert not (tmp_path / "x.json").exists()

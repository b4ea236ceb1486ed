"""``llm-dit embed-stats`` on the built-in tiny model: table, CSV/JSON output, and early errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llm_dit.cli import main

pytestmark = pytest.mark.usefixtures("cached_tokenizer")


def test_embed_stats_prints_and_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes tables to the terminal; keep labels whole
    out = tmp_path / "stats.csv"
    argv = ["embed-stats", "--model", "tiny", "--prompt", "A tabby cat", "--prompt", "A red car"]
    argv += ["-c", "think_block=none", "-c", "think_block=empty", "-c", "hidden_layer=-6", "-o", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "vs think_block=none" in printed and "hidden_layer=-6" in printed
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6  # 2 prompts x 3 conditions
    by = {(r["prompt"], r["condition"]): r for r in rows}
    reference = by["A tabby cat", "think_block=none"]
    assert float(reference["token_cosine"]) == 1.0 and float(reference["pooled_cosine"]) == 1.0
    think = by["A tabby cat", "think_block=empty"]
    assert int(think["tokens"]) > int(reference["tokens"]) and float(think["pooled_cosine"]) < 1.0
    assert float(by["A red car", "hidden_layer=-6"]["token_cosine"]) < 0.999

    as_json = tmp_path / "stats.json"
    assert main([*argv[:-2], "-o", str(as_json)]) == 0
    data = json.loads(as_json.read_text())
    assert data["reference"] == "think_block=none" and len(data["summary"]) == 3


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the conditions to compare"),
        (["-c", "hidden_layr=-6"], "hidden_layer"),
        (["-c", "hidden_layer=99"], "hidden_layer"),
        (["-c", "default", "-o", "x.txt"], ".csv or .json"),
        (["-c", "default", "--outlier-threshold", "0"], "outlier-threshold"),
    ],
)
def test_embed_stats_errors_before_loading(
    extra: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_dit.conditioning import text_encoder as encoder

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the encoder must not load for bad input")

    monkeypatch.setattr(encoder.ZImageTextEncoder, "from_pretrained", refuse)
    assert main(["embed-stats", "--model", "tiny", "--prompt", "A cat", *extra]) == 2
    assert message in capsys.readouterr().err

"""``embed-stats --experiment``: a study's conditions (one per combination, the baseline first) on its prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm_dit.cli import main
from llm_dit.config import Settings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.conditions import experiment_conditions
from llm_dit.experiments.preparation import prepare_experiment

pytestmark = pytest.mark.usefixtures("cached_tokenizer")


def test_combinations_that_make_the_same_features_are_one_condition():
    """vl_style_transfer's 5 strengths make no new features: 3 conditions (text, alpha 0.3, 0.5), each labelled
    by the combinations it stands for; the text one first (the reference)."""
    prepared = prepare_experiment("vl_style_transfer", settings=Settings(), max_prompts=1, seeds=[42])
    conditions = experiment_conditions(prepared.runs)
    assert len(conditions) == 3
    assert conditions[0].conditioning == {} and conditions[0].label.count("|") == 4  # text: 5 strengths
    assert all(c.conditioning["conditioning"] == "vl" for c in conditions[1:])
    assert [c.conditioning["vl_alpha"] for c in conditions[1:]] == [0.3, 0.5]
    assert "strength=0.3,vl_alpha=0.3" in conditions[1].label


def test_experiment_statistics_equal_the_same_conditions_given_by_hand(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    image = tmp_path / "ref.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (200, 60, 20)).save(image)
    out = tmp_path / "exp.json"
    argv = ["embed-stats", "--model", "tiny", "-e", "vl_only_vs_qwen3", "--image", str(image), "--max-prompts", "1"]
    assert main([*argv, "-o", str(out)]) == 0
    by_experiment = json.loads(out.read_text())
    assert by_experiment["reference"] == "config=qwen3_4b"
    labels = [row["condition"] for row in by_experiment["summary"]]
    assert labels == ["config=qwen3_4b", "config=vl_text_tokens", "config=vl_full", "config=blend_0.3"]

    vl = f"conditioning=vl,vl_image={image},vl_layer=-2,vl_normalize=global"
    by_hand = tmp_path / "hand.json"
    prompt = by_experiment["rows"][0]["prompt"]
    hand = ["embed-stats", "--model", "tiny", "--prompt", prompt, "-c", "default"]
    hand += ["-c", f"{vl},vl_alpha=1.0,vl_token_mode=text_only", "-c", f"{vl},vl_alpha=1.0,vl_token_mode=full"]
    hand += ["-c", f"{vl},vl_alpha=0.3,vl_token_mode=full,vl_blend=linear", "-o", str(by_hand)]
    assert main(hand) == 0
    rows = json.loads(by_hand.read_text())["summary"]
    for got, expected in zip(by_experiment["summary"], rows, strict=True):
        for key in ("tokens", "token_cosine", "pooled_cosine", "mean_token_norm", "max_abs", "std_ratio"):
            assert got[key] == expected[key], (got["condition"], key)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-e", "vl_alpha", "-c", "default"], "not both"),
        (["--image", "x.png", "-c", "default"], "--image replaces an experiment's input images"),
        (["-e", "token_importance"], "token_manipulation changes the text"),
        (["-e", "vl_alpha", "--image", "missing.png"], "missing.png"),
    ],
)
def test_experiment_errors_are_one_line(argv, message, capsys):
    assert main(["embed-stats", "--model", "tiny", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err


def test_the_plan_refuses_a_token_manipulation_experiment_directly():
    prepared = prepare_experiment("token_importance", settings=Settings(), max_prompts=1, seeds=[42])
    with pytest.raises(LlmDitError, match="token_manipulation"):
        experiment_conditions(prepared.runs)

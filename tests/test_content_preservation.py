"""Long-prompt content preservation (seed 001, section 5): the library's long prompts' subjects as elements at known
token positions, inside or beyond the caption cap, each scored against the runs' images with a text-image metric
(here a tiny random CLIP twin: the numbers mean nothing, the plumbing is what is checked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bounds import scorer_tolerance
from cli_helpers import flat, run
from llm_dit.analysis.content_preservation import content_preservation, prompt_elements
from llm_dit.conditioning.tokenization import PromptTokenizer
from llm_dit.config import EncoderSettings, MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.prompts import load_library
from llm_dit.models import checkpoint
from tiny_scorers import build_tiny_clip

pytestmark = pytest.mark.usefixtures("cached_tokenizer")


def _elements(tiny_checkpoint: Path, prompt_id: str, **settings: object) -> tuple[list, object, list]:
    info = checkpoint.validate_checkpoint(tiny_checkpoint)
    light = PromptTokenizer.for_checkpoint(info, EncoderSettings())
    prompt = load_library()[prompt_id]
    (tokenized,) = light.tokenize_with([prompt.text], EncoderSettings(**settings))
    _, offsets = light.encode(tokenized.formatted.text)
    return prompt_elements(prompt_id, prompt.text, prompt.subjects, tokenized, offsets), tokenized, offsets


def test_elements_sit_at_the_token_that_starts_them_and_know_the_cap(tiny_checkpoint: Path) -> None:
    front, tokenized, offsets = _elements(tiny_checkpoint, "long_001")
    back, back_tokenized, _ = _elements(tiny_checkpoint, "long_002")
    start = len(tokenized.formatted.prefix)
    for element in front:
        begin, end = offsets[element.token_position]
        assert begin <= start + element.char_offset < end or begin == start + element.char_offset  # its first token
    assert tokenized.token_count > tokenized.cap and back_tokenized.token_count > back_tokenized.cap
    kept = tokenized.cap - tokenized.prefix_len - tokenized.suffix_len
    assert [e.beyond_cap for e in front] == [e.token_position - tokenized.prefix_len >= kept for e in front]
    assert not any(e.beyond_cap for e in front)  # front-heavy: every subject inside what truncation keeps
    assert all(e.beyond_cap for e in back)  # back-heavy: every subject in the part truncation cuts
    assert all(0 <= e.fraction < 0.1 for e in front) and all(0.85 < e.fraction <= 1 for e in back)
    # A cap as large as the prompt keeps everything.
    everything, _, _ = _elements(tiny_checkpoint, "long_002", long_prompt_mode="interpolate", max_text_tokens=1504)
    assert [e.token_position for e in everything] == [e.token_position for e in back]


@pytest.fixture(scope="module")
def long_results(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from llm_dit.cli import main

    root = tmp_path_factory.mktemp("long") / "results"
    argv = ["ablate", "-e", "long_prompt_mode", "--prompt-ids", "long_001,long_002", "--seeds", "42"]
    argv += ["--model-path", str(tiny_checkpoint), "--output-dir", str(root)]
    argv += ["--set", "width=16", "--set", "height=16", "--set", "steps=2"]
    assert main(argv) == 0
    return root


def test_each_element_is_scored_against_each_image_per_mode(long_results: Path, tmp_path: Path) -> None:
    from PIL import Image

    from llm_dit.analysis.results import load_experiment
    from llm_dit.metrics.scorers import ClipScorer

    clip = build_tiny_clip(tmp_path / "clip")
    settings = MetricsSettings(clip_path=str(clip))
    table = content_preservation(long_results, "long_prompt_mode", "clip_score", settings)
    assert table.axis == "long_prompt_mode" and table.values == ["truncate", "interpolate", "pool", "attention_pool"]
    library = load_library()
    assert [r["element"] for r in table.rows] == [*library["long_001"].subjects, *library["long_002"].subjects]
    done = load_experiment(long_results, "long_prompt_mode").done()
    runs = {(r["prompt_id"], r["variables"]["long_prompt_mode"]): r for r in done}
    with ClipScorer.from_pretrained(clip) as scorer:
        for row in table.rows[::5]:
            for mode in table.values:
                target = runs[(row["prompt"], mode)]
                with Image.open(long_results / "long_prompt_mode" / target["image_path"]) as image:
                    (want,) = scorer.score([image.convert("RGB")], [row["element"]])
                # The same model on the same pair, in another batch shape: within two float32 evaluations' bound.
                assert row[mode] == pytest.approx(want, abs=scorer_tolerance(scorer))
    for entry in table.summary:
        inside = [r[entry["value"]] for r in table.rows if not r["beyond_cap"]]
        beyond = [r[entry["value"]] for r in table.rows if r["beyond_cap"]]
        assert entry["within_cap"] == pytest.approx(sum(inside) / len(inside))
        assert entry["beyond_cap"] == pytest.approx(sum(beyond) / len(beyond))
        assert entry["gap_n"] == 0  # no run holds elements on both sides: long_001 all inside, long_002 all beyond


def test_the_command_prints_and_writes_and_refuses_what_cannot_be_scored(
    long_results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = build_tiny_clip(tmp_path / "clip")
    config = tmp_path / "config.toml"
    config.write_text(f'[default.metrics]\nclip_path = "{clip}"\n', encoding="utf-8")
    out = tmp_path / "table.json"
    argv = ("content-preservation", "long_prompt_mode", "--output-dir", long_results, "--config", config)
    rc, stdout, err = run(capsys, *argv, "--metric", "clip_score", "-o", out)
    assert rc == 0, err
    assert "lighthouse" in stdout and "inside vs beyond the cap" in flat(stdout) and out.is_file()
    rc, _, err = run(capsys, *argv, "--metric", "ssim")
    assert rc == 2 and "needs a text-image metric" in err
    rc, _, err = run(capsys, "content-preservation", "long_prompt_mode", "--output-dir", long_results, "-m", "siglip")
    assert rc == 2 and "siglip_path" in err


def test_short_prompts_have_nothing_to_preserve(tiny_results: Path, tmp_path: Path) -> None:
    clip = build_tiny_clip(tmp_path / "clip")
    with pytest.raises(LlmDitError, match="no done run has an annotated library prompt over the caption cap"):
        content_preservation(tiny_results, "look", "clip_score", MetricsSettings(clip_path=str(clip)))

"""Golden strings for prompt formatting (REFERENCE.md: the official encoding path)."""

import pytest

from llm_dit.conditioning.prompt import format_prompt, think_block_text
from llm_dit.constants import DEFAULT_THINK_BLOCK
from llm_dit.errors import LlmDitError

OFFICIAL = "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n"


def test_default_is_the_official_format_without_think_block():
    assert DEFAULT_THINK_BLOCK == "none"
    assert format_prompt("A cat").text == OFFICIAL


def test_empty_think_block_appends_the_qwen3_empty_block():
    assert format_prompt("A cat", think_block="empty").text == OFFICIAL + "<think>\n\n</think>\n\n"


def test_think_block_with_text_renders_like_qwen3_reasoning():
    text = format_prompt("A cat", think_block="sharp focus").text
    assert text == OFFICIAL + "<think>\nsharp focus\n</think>\n\n"


def test_system_prompt_comes_first():
    fp = format_prompt("A cat", system_prompt="You are a painter.")
    assert fp.text == "<|im_start|>system\nYou are a painter.<|im_end|>\n" + OFFICIAL
    assert format_prompt("A cat", system_prompt="").text == OFFICIAL


def test_prompt_text_is_passed_through_unaltered():
    raw = "  two spaces,\nnew line, <b>tags</b> and 中文  "
    fp = format_prompt(raw, think_block="empty")
    assert fp.content == raw
    assert fp.text == fp.prefix + raw + fp.suffix
    assert fp.text.count(raw) == 1


def test_none_and_string_none_agree():
    assert think_block_text(None) == think_block_text("none") == ""


def test_non_string_prompt_is_rejected():
    with pytest.raises(LlmDitError, match="prompt must be a string"):
        format_prompt(["a", "b"])  # type: ignore[arg-type]

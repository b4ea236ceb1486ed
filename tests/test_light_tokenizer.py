"""The tokenizers-only tokenizer of the light paths against the transformers tokenizer the encoder uses.

The reference is transformers itself: ``checkpoint.load_tokenizer`` (``AutoTokenizer``, what the encoder feeds
Qwen3) and ``Qwen2Tokenizer`` over a fresh conversion of the built-in ranks. The light path is the same backend
through the disk cache (models/tokenizer.py): its ids and offsets must equal the reference's on every prompt, and
the shared tokenization (conditioning/tokenization.py) must give the same tokens, caps and errors over either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import subprocess_env
from llm_dit.conditioning.prompt import format_prompt
from llm_dit.conditioning.tokenization import PromptTokenizer, token_encoder
from llm_dit.config import EncoderSettings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.prompts import list_prompts, load_library
from llm_dit.models import checkpoint
from llm_dit.models import tokenizer as tokenizer_module
from llm_dit.models.tokenizer import (
    build_qwen3_tokenizer,
    cached_tokenizer,
    checkpoint_tokenizer,
    convert_qwen3_backend,
    qwen3_backend,
)

SYSTEM = "You are an assistant that describes images in detail."
SPECIAL = (
    "<|im_start|>user\nx<|im_end|>\n<|endoftext|><|vision_start|><|image_pad|><|vision_end|>"
    "<tool_call>{}</tool_call><|fim_prefix|>a<|fim_middle|>b<|fim_suffix|><think>why</think>"
)
EDGE_TEXTS = [
    "",
    " ",
    "a",
    "A tabby cat sleeping on a sunlit windowsill",
    "一只虎斑猫在洒满阳光的窗台上睡觉。日本語も少し。한국어 문장.",
    "Emoji: 🐱🌞👍🏽 and ZWJ 👩‍👩‍👧 flags 🇯🇵🇫🇷, keycap 1️⃣",
    "cafe\u0301 vs caf\u00e9, \u212b vs \u00c5, Ｆｕｌｌｗｉｄｔｈ ﬁ ligature, \u0958 (NFC expands it)",
    "digits 1234567890 3.14159 -42 1e-6 0x1F",
    "\ttabs,   spaces,  trailing   \r\nCRLF\n\n\n   \u00a0nbsp\u2009thin\u3000ideographic",
    "don't I'll we've they're IT'S 'quoted' \"double\" ‘curly’ “curly” — dash… ellipsis",
    "control \x00\x01\x07\x1b[31m chars \u200b\u200d\ufeff zero-width",
    SPECIAL,
    "<|im_start|> not special? <|im_start |> <|IM_START|> <think >",
    "def f(x):\n    return x ** 2  # comment\n",
    "مرحبا بالعالم، שלום עולם, Привет мир, Γειά σου Κόσμε, नमस्ते दुनिया",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝛼𝛽𝛾 and astral 𠀀𠀁 CJK ext B",
    " ".join(f"{w} {i}" for i, w in enumerate(["mountain", "river", "castle", "dragon", "forest"] * 400)),
    "x" * 5000,
    "🐱" * 700,
]
THINK_BLOCKS = ["none", "empty", "I should draw a cat.\nThen a window."]


def _texts() -> list[str]:
    """Every library prompt and the edge cases, raw and in every chat format the encoder builds."""
    raw = [p.text for p in list_prompts(load_library())] + EDGE_TEXTS
    formatted = [
        format_prompt(text, system, think).text
        for text in raw[::3] + EDGE_TEXTS
        for system in (None, SYSTEM)
        for think in THINK_BLOCKS
    ]
    return raw + formatted


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    """The encoder's tokenizer: transformers' AutoTokenizer over the checkpoint's tokenizer/."""
    return checkpoint.load_tokenizer(tiny_checkpoint)


def _ids_offsets(encode, texts: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
    return [encode(text) for text in texts]


def test_checkpoint_tokenizer_equals_transformers_on_many_prompts(tiny_checkpoint: Path, reference) -> None:
    texts = _texts()
    assert len(texts) > 300
    light = checkpoint_tokenizer(tiny_checkpoint)
    assert type(light).__module__.startswith("tokenizers")
    expected = [
        (list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]])
        for enc in (reference(text, return_offsets_mapping=True) for text in texts)
    ]
    got = [(enc.ids, list(enc.offsets)) for enc in (light.encode(text) for text in texts)]
    for text, want, have in zip(texts, expected, got, strict=True):
        assert have == want, text[:80]
    # The cases that matter are there: specials as single tokens, a 5000-token prompt.
    assert any(151644 in ids for ids, _ in got) and max(len(ids) for ids, _ in got) > 5000


def test_builtin_backend_through_the_cache_equals_a_fresh_conversion() -> None:
    fresh = convert_qwen3_backend()
    cached = qwen3_backend()
    assert cached.to_str() == fresh.to_str()  # so tokenizer.json files saved from either are byte-identical
    texts = _texts()
    reference = build_qwen3_tokenizer(fresh)
    assert _ids_offsets(token_encoder(cached), texts) == _ids_offsets(token_encoder(reference), texts)


SETTINGS = [
    {},
    {"system_prompt": SYSTEM},
    {"think_block": "empty"},
    {"think_block": "A long reasoning block. " * 10, "system_prompt": SYSTEM},
    {"max_text_tokens": 48, "long_prompt_mode": "truncate"},
    {"max_text_tokens": 48, "long_prompt_mode": "interpolate", "system_prompt": SYSTEM},
    {"max_text_tokens": 48, "long_prompt_mode": "none"},
    {"max_text_tokens": 16, "long_prompt_mode": "pool", "system_prompt": SYSTEM},  # the template fills the cap
    {"hidden_layer": -40},
]


def _outcome(prompts: PromptTokenizer, text: str, overrides: dict) -> object:
    try:
        return prompts.tokenize(text, **overrides)[0]
    except LlmDitError as exc:
        return f"error: {exc}"


def test_prompt_tokenizer_gives_the_same_tokens_caps_and_errors_over_either(tiny_checkpoint: Path, reference) -> None:
    """The encoder's tokenization (transformers) and the light checks' (tokenizers) are one implementation over
    the same numbers: equal TokenizedPrompt records and equal errors, for every setting kind."""
    info = checkpoint.validate_checkpoint(tiny_checkpoint)
    base = EncoderSettings()
    heavy = PromptTokenizer(reference, num_layers=info.num_text_layers, max_caption_tokens=1504, settings=base)
    light = PromptTokenizer.for_checkpoint(info, base)
    texts = [p.text for p in list_prompts(load_library())][::4] + EDGE_TEXTS
    outcomes = [(_outcome(heavy, t, o), _outcome(light, t, o)) for t in texts for o in SETTINGS]
    assert all(a == b for a, b in outcomes)
    kinds = {type(a).__name__ if not isinstance(a, str) else a.split(";")[0][:30] for a, _ in outcomes}
    assert any(isinstance(a, str) and "over the cap of 48" in a for a, _ in outcomes), kinds
    assert any(isinstance(a, str) and "chat template alone" in a for a, _ in outcomes), kinds
    assert any(isinstance(a, str) and "out of range" in a for a, _ in outcomes), kinds
    assert any(not isinstance(a, str) and a.truncated for a, _ in outcomes)
    assert any(not isinstance(a, str) and a.compress for a, _ in outcomes)


def test_light_tokenizer_loads_lazily_and_imports_no_model_library(tiny_checkpoint: Path) -> None:
    """Once cached (this process built it), a new process tokenizes with tokenizers alone."""
    checkpoint_tokenizer(tiny_checkpoint)  # the session cache holds it now
    code = (
        "import sys\n"
        "from llm_dit.conditioning.tokenization import PromptTokenizer\n"
        "from llm_dit.config import EncoderSettings\n"
        "from llm_dit.models.checkpoint import validate_checkpoint\n"
        "info = validate_checkpoint(sys.argv[1])\n"
        "prompts = PromptTokenizer.for_checkpoint(info, EncoderSettings())\n"
        "before = prompts._tokenizer is None\n"
        "count = prompts.tokenize('A cat')[0].token_count\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules]\n"
        "print(before, count, heavy)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tiny_checkpoint)], capture_output=True, text=True, env=subprocess_env()
    )
    assert done.stdout.split() == ["True", "10", "[]"], done.stdout + done.stderr


def test_cache_entries_are_keyed_whole_and_rebuilt_when_unreadable(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = checkpoint_tokenizer(tiny_checkpoint)  # from the session cache
    monkeypatch.setenv("LLM_DIT_TOKENIZER_CACHE", str(tmp_path / "cache"))
    built: list[str] = []

    def build(tag: str):
        def make():
            built.append(tag)
            return source, {"encode_special_tokens": tag == "split"}

        return make

    first = cached_tokenizer({"k": 1}, build("a"))
    again = cached_tokenizer({"k": 1}, build("b"))
    assert built == ["a"] and again.encode("x<think>").ids == first.encode("x<think>").ids
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 2 and entries[1].endswith(".meta.json")
    meta = json.loads((tmp_path / "cache" / entries[1]).read_text())
    assert meta["key"]["k"] == 1 and meta["key"]["tokenizers"] and meta["key"]["format"] == 1
    # Another key is another entry; the flags tokenizer.json does not carry come back from the meta.
    split = cached_tokenizer({"k": 2}, build("split"))
    assert built == ["a", "split"] and split.encode_special_tokens
    assert len(split.encode("<|im_start|>").ids) > 1  # split into ordinary tokens, as split_special_tokens does
    # A damaged entry is rebuilt, not trusted.
    (tmp_path / "cache" / entries[0]).write_text("{not json")
    rebuilt = cached_tokenizer({"k": 1}, build("c"))
    assert built == ["a", "split", "c"] and rebuilt.encode("A cat").ids == first.encode("A cat").ids


def test_checkpoint_key_follows_the_tokenizer_files(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changing a file of tokenizer/ is a new cache entry (built with transformers), never the old one."""
    import shutil

    monkeypatch.setenv("LLM_DIT_TOKENIZER_CACHE", str(tmp_path / "cache"))
    copy = tmp_path / "ck"
    (copy / "tokenizer").mkdir(parents=True)
    for entry in (tiny_checkpoint / "tokenizer").iterdir():
        shutil.copy(entry, copy / "tokenizer" / entry.name)
    calls: list[Path] = []
    real = tokenizer_module._transformers_backend

    def counting(folder: Path):
        calls.append(folder)
        return real(folder)

    monkeypatch.setattr(tokenizer_module, "_transformers_backend", counting)
    plain = checkpoint_tokenizer(copy)
    checkpoint_tokenizer(copy)
    assert len(calls) == 1
    config = copy / "tokenizer" / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data["split_special_tokens"] = True
    config.write_text(json.dumps(data))
    split = checkpoint_tokenizer(copy)
    assert len(calls) == 2
    reference = checkpoint.load_tokenizer(copy)
    text = "x<|im_start|>y</think>"  # split_special_tokens splits the special <|im_start|>, not </think>
    assert split.encode(text).ids == reference(text)["input_ids"] != plain.encode(text).ids

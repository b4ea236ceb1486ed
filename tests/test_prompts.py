"""The prompt library, prompt selection and the token-importance manipulations."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from llm_dit.constants import HARD_MAX_TEXT_TOKENS
from llm_dit.errors import LlmDitError
from llm_dit.experiments.prompts import (
    CATEGORIES,
    CATEGORY_ID_PREFIX,
    MANIPULATIONS,
    Prompt,
    list_prompts,
    load_library,
    manipulate,
    select_prompts,
)

CAT_TEXT = "A fluffy orange cat sleeping on a velvet red couch"
CAT = Prompt(
    id="t_cat",
    text=CAT_TEXT,
    subjects=("cat", "couch"),
    descriptors=("fluffy", "orange", "velvet", "red"),
)


@pytest.fixture(scope="module")
def library() -> dict[str, Prompt]:
    return load_library()


@pytest.fixture(scope="module")
def tokenizer():
    from llm_dit.models.tokenizer import build_qwen3_tokenizer

    return build_qwen3_tokenizer()


def _formatted_tokens(tokenizer, text: str) -> int:
    chat = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    return len(tokenizer(chat, add_special_tokens=False)["input_ids"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ library


def test_library_size_and_categories(library: dict[str, Prompt]) -> None:
    assert len(library) >= 50
    counts = Counter(p.category for p in library.values())
    assert set(counts) == set(CATEGORIES)
    for category in CATEGORIES:
        assert counts[category] >= (4 if category == "long" else 5), category


def test_library_ids_match_categories(library: dict[str, Prompt]) -> None:
    for pid, prompt in library.items():
        assert prompt.id == pid
        assert re.fullmatch(rf"{CATEGORY_ID_PREFIX[prompt.category]}_\d{{3}}", pid), pid
    assert [p.id for p in list_prompts(library)] == sorted(library)


def test_library_contains_seed_examples(library: dict[str, Prompt]) -> None:
    texts = {p.text for p in library.values()}
    for text in (
        "A tabby cat sleeping on a windowsill",
        "A cat sleeping on a red couch",
        "Portrait of an elderly woman, studio lighting",
        "Cyberpunk cityscape at night, neon lights",
        "A bowl of fresh fruit on a wooden table",
        "Abstract geometric patterns in blue and gold",
        CAT_TEXT,
        "An ancient stone castle on a misty green hillside",
    ):
        assert text in texts


def test_annotations_are_words_of_the_text(library: dict[str, Prompt]) -> None:
    for prompt in library.values():
        assert prompt.subjects and prompt.descriptors, prompt.id
        for word in prompt.subjects + prompt.descriptors:
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", prompt.text, re.IGNORECASE), (prompt.id, word)
        assert isinstance(prompt.subjects, tuple)


def test_prompt_token_counts(library: dict[str, Prompt], tokenizer) -> None:
    for prompt in library.values():
        n = _formatted_tokens(tokenizer, prompt.text)
        if prompt.category == "long":
            assert n > HARD_MAX_TEXT_TOKENS, (prompt.id, n)
        else:
            assert n < 300, (prompt.id, n)


def test_long_prompts_place_content_where_named(library: dict[str, Prompt], tokenizer) -> None:
    """front-heavy: the key objects only early; back-heavy: only past the 1504-token cap."""

    def first_token(prompt: Prompt, word: str) -> int:
        index = re.search(rf"\b{word}\b", prompt.text).start()
        return _formatted_tokens(tokenizer, prompt.text[:index])

    front, back = library["long_001"], library["long_002"]
    assert all(first_token(front, w) < 400 for w in ("lighthouse", "sailboat", "Labrador", "fisherman"))
    assert all(first_token(back, w) > HARD_MAX_TEXT_TOKENS for w in ("café", "poodle", "bicycle", "waiter"))


def test_load_library_is_cached_but_returns_copies(library: dict[str, Prompt]) -> None:
    again = load_library()
    assert again == library and again is not library
    again.clear()
    assert load_library() == library


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"text": "A cat", "category": "x", "colour": "red"}, "prompt 'p_001': unknown field 'colour'"),
        ({"category": "x"}, "missing required field 'text'"),
        ({"text": "A cat"}, "missing required field 'category'"),
        ({"text": "  ", "category": "x"}, "text must not be empty"),
        ({"text": "A cat", "category": "x", "subjects": "cat"}, "subjects must be a list"),
        ({"text": "A cat", "category": "x", "subjects": ["dog"]}, "'dog' is not a word of the text"),
        ({"text": "A catalog", "category": "x", "subjects": ["cat"]}, "'cat' is not a word of the text"),
        ({"text": "A red cat", "category": "x", "subjects": ["red"], "descriptors": ["red"]}, "listed twice"),
        ({"text": "A <|im_end|> cat", "category": "x"}, "chat-template token <|im_end|>"),
    ],
)
def test_load_library_is_strict(tmp_path: Path, entry: dict, message: str) -> None:
    path = _write(tmp_path / "lib.json", json.dumps({"p_001": entry}))
    with pytest.raises(LlmDitError, match=re.escape(message)):
        load_library(path)


def test_load_library_rejects_bad_json_with_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "lib.json", '{\n  "p_001": {"text": "A cat", "category": "x"},\n}\n')
    with pytest.raises(LlmDitError, match=re.escape(f"{path}:3: invalid JSON")):
        load_library(path)
    path = _write(tmp_path / "dup.json", '{"a": {"text": "A", "category": "x"}, "a": {"text": "B", "category": "x"}}')
    with pytest.raises(LlmDitError, match="duplicate key 'a'"):
        load_library(path)


# ---------------------------------------------------------------------------------------------- selection


def test_no_selection_returns_empty(library: dict[str, Prompt]) -> None:
    assert select_prompts(library) == []
    assert select_prompts(library, ids=[], texts=[]) == []


def test_select_by_ids_keeps_order(library: dict[str, Prompt]) -> None:
    got = select_prompts(library, ids=["style_002", "animal_001", "style_002"])
    assert [p.id for p in got] == ["style_002", "animal_001"]
    assert got[1] is library["animal_001"]


def test_select_by_category(library: dict[str, Prompt]) -> None:
    got = select_prompts(library, category="animals")
    assert [p.id for p in got] == sorted(pid for pid in library if pid.startswith("animal_"))
    assert all(p.category == "animals" for p in got)


def test_select_custom_texts() -> None:
    got = select_prompts({}, texts=["A red apple", "A blue car", " A red apple "])
    assert got == [
        Prompt(id="custom_001", text="A red apple", category="custom"),
        Prompt(id="custom_002", text="A blue car", category="custom"),
    ]
    with pytest.raises(LlmDitError, match="texts must be a list"):
        select_prompts({}, texts="A red apple")


def test_select_text_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "A red apple\n\n   \nA blue car\nA red apple\n")
    got = select_prompts({}, prompts_file=path)
    assert [(p.id, p.text, p.category) for p in got] == [
        ("file_001", "A red apple", "file"),
        ("file_002", "A blue car", "file"),
    ]


def test_select_text_file_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "A red apple\n\nA <|im_start|> car\n")
    with pytest.raises(LlmDitError, match=re.escape(f"{path}:3:")):
        select_prompts({}, prompts_file=path)
    with pytest.raises(LlmDitError, match="does not exist"):
        select_prompts({}, prompts_file=tmp_path / "missing.txt")


def test_select_json_file(tmp_path: Path) -> None:
    entries = {
        "mine_001": {"text": "A red apple", "category": "mine", "subjects": ["apple"], "descriptors": ["red"]},
        "mine_002": {"text": "A blue car", "category": "mine"},
    }
    path = _write(tmp_path / "p.json", json.dumps(entries))
    got = select_prompts({}, prompts_file=path)
    assert [p.id for p in got] == ["mine_001", "mine_002"]
    assert got[0].subjects == ("apple",) and got[0].descriptors == ("red",)
    assert manipulate(got[0], "remove_adjectives") == "A apple"


def test_select_combines_sources_in_order(library: dict[str, Prompt], tmp_path: Path) -> None:
    path = _write(tmp_path / "p.txt", "A blue car\n")
    got = select_prompts(
        library, ids=["style_001", "simple_002"], category="simple", texts=["A red apple"], prompts_file=path
    )
    simple = sorted(pid for pid in library if pid.startswith("simple_"))
    expected = ["style_001", "simple_002"] + [pid for pid in simple if pid != "simple_002"] + ["custom_001", "file_001"]
    assert [p.id for p in got] == expected
    assert [p.id for p in select_prompts(library, category="simple", texts=["x"], max_prompts=3)] == simple[:3]


def test_select_conflicting_ids_is_an_error(library: dict[str, Prompt], tmp_path: Path) -> None:
    path = _write(tmp_path / "p.json", json.dumps({"animal_001": {"text": "A dog", "category": "animals"}}))
    with pytest.raises(LlmDitError, match="'animal_001' is selected twice with different content"):
        select_prompts(library, ids=["animal_001"], prompts_file=path)


def test_max_prompts(library: dict[str, Prompt]) -> None:
    assert [p.id for p in select_prompts(library, ids=["animal_003", "animal_001"], max_prompts=1)] == ["animal_003"]
    with pytest.raises(LlmDitError, match="at least 1"):
        select_prompts(library, ids=["animal_001"], max_prompts=0)


def test_unknown_id_suggests_nearest(library: dict[str, Prompt]) -> None:
    with pytest.raises(
        LlmDitError, match=r"unknown prompt id 'aminal_003'; did you mean animal_003[,?].*--list-prompts"
    ):
        select_prompts(library, ids=["simple_001", "aminal_003"])
    with pytest.raises(LlmDitError, match=r"unknown prompt id 'zzz' \(use --list-prompts"):
        select_prompts(library, ids=["zzz"])


def test_unknown_category_lists_categories(library: dict[str, Prompt]) -> None:
    with pytest.raises(LlmDitError, match=r"unknown prompt category 'animal'; categories: animals, complex, long"):
        select_prompts(library, category="animal")


def test_nothing_selected_is_an_error(library: dict[str, Prompt], tmp_path: Path) -> None:
    with pytest.raises(LlmDitError, match="selection is empty"):
        select_prompts(library, prompts_file=_write(tmp_path / "empty.txt", "\n \n"))
    with pytest.raises(LlmDitError, match="selection is empty"):
        select_prompts({}, category="animals")  # a known category with no prompts in this library


# ------------------------------------------------------------------------------------------ manipulations

EXPECTED = {
    "baseline": CAT_TEXT,
    "duplicate_important": "A fluffy fluffy orange orange cat sleeping on a velvet velvet red red couch",
    "front_load": "fluffy orange velvet red A cat sleeping on a couch",
    "back_load": "A cat sleeping on a couch fluffy orange velvet red",
    "remove_adjectives": "A cat sleeping on a couch",
    "remove_nouns": "A fluffy orange sleeping on a velvet red",
    # Two nouns: the only permutation that changes anything is the swap, whatever the seed.
    "shuffle_nouns": "A fluffy orange couch sleeping on a velvet red cat",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_manipulation_expected_text(name: str) -> None:
    assert manipulate(CAT, name) == EXPECTED[name]
    assert manipulate(CAT, name, seed=7) == EXPECTED[name]


def test_every_manipulation_is_tested() -> None:
    assert set(EXPECTED) | {"shuffle_all"} == set(MANIPULATIONS)


def test_shuffle_all_is_a_seeded_permutation() -> None:
    outputs = {seed: manipulate(CAT, "shuffle_all", seed=seed) for seed in range(5)}
    for text in outputs.values():
        assert Counter(text.split()) == Counter(CAT_TEXT.split())
        assert text != CAT_TEXT
    assert manipulate(CAT, "shuffle_all", seed=3) == outputs[3]
    assert len(set(outputs.values())) > 1


def test_shuffle_nouns_keeps_other_words_in_place() -> None:
    prompt = Prompt(
        id="t",
        text="A dog, a cat and a bird near a tree by the lake",
        subjects=("dog", "cat", "bird", "tree", "lake"),
    )
    outputs = {manipulate(prompt, "shuffle_nouns", seed=seed) for seed in range(6)}
    assert len(outputs) > 1
    original = prompt.text.split()
    for text in outputs:
        words = text.split()
        assert len(words) == len(original) and text != prompt.text
        assert words[1].endswith(",")  # punctuation stays at its position
        nouns = {"dog", "cat", "bird", "tree", "lake"}
        assert sorted(w.rstrip(",") for w in words if w.rstrip(",") in nouns) == sorted(nouns)
        for got, want in zip(words, original, strict=True):
            if want.rstrip(",") not in nouns:
                assert got == want


def test_manipulation_punctuation_and_whitespace() -> None:
    prompt = Prompt(
        id="t",
        text="Cyberpunk  cityscape at night,\n neon lights.",
        subjects=("cityscape", "night", "lights"),
        descriptors=("Cyberpunk", "neon"),
    )
    assert manipulate(prompt, "baseline") == prompt.text
    assert manipulate(prompt, "remove_nouns") == "Cyberpunk at, neon."
    assert manipulate(prompt, "duplicate_important") == "Cyberpunk Cyberpunk cityscape at night, neon neon lights."
    assert manipulate(prompt, "back_load") == "cityscape at night, lights. Cyberpunk neon"


def test_manipulation_errors(library: dict[str, Prompt]) -> None:
    with pytest.raises(LlmDitError, match="unknown manipulation 'shuffle'; valid: baseline, shuffle_all"):
        manipulate(CAT, "shuffle")
    custom = select_prompts(library, texts=["A red apple"])[0]
    assert manipulate(custom, "baseline") == "A red apple"
    assert manipulate(custom, "shuffle_all") != "A red apple"
    with pytest.raises(LlmDitError, match="prompt custom_001 has no subjects annotated; token_importance needs"):
        manipulate(custom, "remove_nouns")
    with pytest.raises(LlmDitError, match="prompt custom_001 has no descriptors annotated"):
        manipulate(custom, "front_load")
    for name in MANIPULATIONS:  # every library prompt carries the annotations every manipulation needs
        for prompt in library.values():
            manipulate(prompt, name)

"""The Qwen3-Embedding source (conditioning/embedding_encoder.py) against transformers and sentence-transformers on
the tiny Qwen3-Embedding twin.

Expected values never come from llm-dit itself: prompt texts are written out by hand, token ids come from the
tokenizer sentence-transformers loads from the folder, hidden states from ``Qwen3Model`` loaded separately and run
on one unpadded prompt, retrieval vectors from ``SentenceTransformer(path).encode``. Bit for bit where the
computation is the same (one prompt, no padding; the same batch through the same modules), otherwise within the
rounding bound of tests/bounds.py (tests/README.md, "Tolerance policy").
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import Qwen3Model

from bounds import EPS32, assert_bit_equal, count_reductions, rounding_bound, worst_case
from llm_dit.conditioning import prompt as prompt_module
from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
from llm_dit.constants import DEFAULT_EMBEDDING_TASK, ENDOFTEXT_ID, THINK_END_ID, THINK_START_ID
from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.models import embedding_model
from llm_dit.models.devices import quiet_hf
from llm_dit.models.embedding_model import EMBEDDING_QUERY_TASK, tiny_embedding_path

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

NUM_LAYERS = 36
HIDDEN = 32
VOCAB = 151665  # the released config's vocab_size: <think> (151667) and </think> (151668) lie outside it

# Different token lengths (so right padding is exercised), longest first by characters: SentenceTransformer.encode
# sorts its inputs by descending character length, so in this order its batch is exactly the encoder's.
TEXTS = ["A tabby cat sleeping on a sunlit windowsill, warm light", "一只猫 in a neon-lit alley", "a cat"]
LAYERS = [0, 5, -2, -1]
FORMATS = ["chat", "raw", "instruction"]
TASK = "Find the picture this caption describes"


def expected_text(text: str, fmt: str, task: str = DEFAULT_EMBEDDING_TASK) -> str:
    """What the model reads, by hand."""
    return {
        "chat": f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n",
        "raw": text,
        "instruction": f"Instruct: {task}\nQuery:{text}",
    }[fmt]


@pytest.fixture(scope="module")
def encoder():
    return EmbeddingEncoder.from_pretrained(None, device="cpu", torch_dtype="fp32")


@pytest.fixture(scope="module")
def sentence_model():
    with quiet_hf():
        return SentenceTransformer(str(tiny_embedding_path()), device="cpu")


@pytest.fixture(scope="module")
def tokenizer(sentence_model):
    """The released tokenizer as sentence-transformers loads it (appends <|endoftext|>), not llm-dit's loader."""
    return sentence_model.tokenizer


@pytest.fixture(scope="module")
def reference():
    with quiet_hf():
        model = Qwen3Model.from_pretrained(tiny_embedding_path())
    return model.eval().requires_grad_(False)


def token_ids(tokenizer, text: str) -> list[int]:
    ids = tokenizer(text)["input_ids"]
    assert ids[-1] == ENDOFTEXT_ID  # the released tokenizer appends it to every input
    return ids


def reference_states(reference, ids: list[int]) -> tuple[list[torch.Tensor], int]:
    """Every hidden state [L, D] of one unpadded prompt, and the reductions counted on that run (bounds.py)."""
    input_ids = torch.tensor([ids])
    with torch.no_grad(), count_reductions(reference) as counted:
        out = reference(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), output_hidden_states=True)
    assert len(out.hidden_states) == NUM_LAYERS + 1
    return [h[0] for h in out.hidden_states], counted.total


def assert_padded_rows(got: torch.Tensor, expected: torch.Tensor, factor: int, layer: int) -> None:
    """Rows of a right-padded batch against the unpadded run. The real rows attend to the same keys at the same
    positions (the padded keys are masked: their softmax weights are exact zeros), so only the order of the
    roundings differs: two float32 evaluations, each within eps32 * factor * max|x| of the exact value (factor:
    the reductions counted on the unpadded run, bounds.count_reductions), differ by at most twice that. Layer 0 is
    a row gather of the embedding table (no arithmetic): exact."""
    assert got.shape == expected.shape, (got.shape, expected.shape)
    if layer == 0:
        assert_bit_equal(got, expected)
        return
    err = (got.double() - expected.double()).abs().max().item()
    bound = 2 * rounding_bound(expected, factor)
    assert err <= bound, f"layer {layer}: max abs error {err:.3g} > bound {bound:.3g}"


# -- conditioning: hidden states ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
def test_encode_layers_match_the_unpadded_model(encoder, tokenizer, reference, fmt):
    batched = encoder.encode_layers(TEXTS, [*LAYERS, -2], prompt_format=fmt)  # a repeated layer counts once
    assert len(batched) == len(TEXTS)
    lengths = set()
    for text, rows in zip(TEXTS, batched, strict=True):
        ids = token_ids(tokenizer, expected_text(text, fmt))[:-1]  # without the appended <|endoftext|>
        lengths.add(len(ids))
        states, factor = reference_states(reference, ids)
        (alone,) = encoder.encode_layers(text, LAYERS, prompt_format=fmt)
        assert list(rows) == list(alone) == LAYERS
        for layer in LAYERS:
            assert rows[layer].shape == (len(ids), HIDDEN)
            assert rows[layer].dtype == torch.float32
            assert_bit_equal(alone[layer], states[layer])  # one prompt, no padding: the same computation
            assert_padded_rows(rows[layer], states[layer], factor, layer)
    assert len(lengths) == len(TEXTS)  # really different lengths: the shorter prompts were padded


def test_instruction_task_reaches_the_model(encoder, tokenizer, reference):
    (rows,) = encoder.encode_layers(TEXTS[2], [-2], prompt_format="instruction", instruction=TASK)
    states, _ = reference_states(reference, token_ids(tokenizer, expected_text(TEXTS[2], "instruction", TASK))[:-1])
    assert_bit_equal(rows[-2], states[-2])


def test_batches_keep_their_order(encoder, tokenizer, reference):
    """Three prompts in batches of 2 and 1: each result is its own prompt's rows."""
    small = EmbeddingEncoder(
        lambda: (encoder.model, encoder.tokenizer),
        num_layers=encoder.num_layers,
        hidden_size=encoder.hidden_size,
        vocab_size=encoder.vocab_size,
        batch_size=2,
    )
    texts = [TEXTS[2], TEXTS[0], TEXTS[1]]
    for text, rows in zip(texts, small.encode_layers(texts, [-2], prompt_format="raw"), strict=True):
        states, factor = reference_states(reference, token_ids(tokenizer, text)[:-1])
        assert_padded_rows(rows[-2], states[-2], factor, -2)


@pytest.mark.parametrize("fmt", FORMATS)
def test_keep_eot_adds_exactly_the_final_endoftext_row(encoder, tokenizer, reference, fmt):
    for text in TEXTS:
        ids = token_ids(tokenizer, expected_text(text, fmt))
        states, factor = reference_states(reference, ids)
        (kept,) = encoder.encode_layers(text, LAYERS, prompt_format=fmt, keep_eot=True)
        (dropped,) = encoder.encode_layers(text, LAYERS, prompt_format=fmt)
        for layer in LAYERS:
            assert kept[layer].shape == (len(ids), HIDDEN)
            assert dropped[layer].shape == (len(ids) - 1, HIDDEN)
            assert_bit_equal(kept[layer], states[layer])  # one prompt, no padding, with its <|endoftext|> row
            # The causal model's first rows do not see the last token; the two runs differ in length only.
            assert_padded_rows(dropped[layer], kept[layer][:-1], factor, layer)


def test_only_the_appended_endoftext_is_dropped(encoder, tokenizer, reference):
    text = "a cat<|endoftext|>"  # the prompt's own <|endoftext|>, then the tokenizer's
    ids = token_ids(tokenizer, text)
    assert ids[-2:] == [ENDOFTEXT_ID, ENDOFTEXT_ID]
    states, _ = reference_states(reference, ids)
    (dropped,) = encoder.encode_layers(text, [-1], prompt_format="raw")
    (kept,) = encoder.encode_layers(text, [-1], prompt_format="raw", keep_eot=True)
    assert dropped[-1].shape[0] == len(ids) - 1
    assert_bit_equal(kept[-1], states[-1])
    # Empty raw prompt: only the appended <|endoftext|>, which is kept on request and otherwise leaves nothing.
    (only,) = encoder.encode_layers("", [0], prompt_format="raw", keep_eot=True)
    assert only[0].shape == (1, HIDDEN)
    with pytest.raises(LlmDitError, match="no tokens"):
        encoder.encode_layers("", [0], prompt_format="raw")


@pytest.mark.parametrize("layer", [NUM_LAYERS + 1, -(NUM_LAYERS + 2)])
def test_layer_out_of_range_is_refused(encoder, layer):
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        encoder.encode_layers(TEXTS[2], [-2, layer])


# -- prompt formats -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [*TEXTS, "", "  spaces  ", "two\nlines"])
def test_format_prompt(text):
    assert EmbeddingEncoder.format_prompt(text) == expected_text(text, "chat")
    assert EmbeddingEncoder.format_prompt(text, "chat") == prompt_module.format_prompt(text).text
    assert EmbeddingEncoder.format_prompt(text, "chat", "ignored") == expected_text(text, "chat")
    assert EmbeddingEncoder.format_prompt(text, "raw") == text
    assert EmbeddingEncoder.format_prompt(text, "instruction") == f"Instruct: {DEFAULT_EMBEDDING_TASK}\nQuery:{text}"
    assert EmbeddingEncoder.format_prompt(text, "instruction", TASK) == f"Instruct: {TASK}\nQuery:{text}"
    assert DEFAULT_EMBEDDING_TASK == "Given a text prompt, retrieve images that match it"


def test_unknown_format_is_refused(encoder):
    needle = r"unknown embedding_format 'query'.*chat, raw, instruction"
    with pytest.raises(LlmDitError, match=needle):
        EmbeddingEncoder.format_prompt("a cat", "query")
    with pytest.raises(LlmDitError, match=needle):
        encoder.encode_layers("a cat", [-2], prompt_format="query")


@pytest.mark.parametrize(
    ("text", "fmt", "bad"),
    [
        ("a <think> cat", "raw", [THINK_START_ID]),
        ("a cat</think>", "chat", [THINK_END_ID]),
        ("<think>\n\n</think>\n\na cat", "instruction", [THINK_START_ID, THINK_END_ID]),
    ],
)
def test_ids_outside_the_vocabulary_are_refused(encoder, tokenizer, text, fmt, bad):
    assert sorted(set(token_ids(tokenizer, expected_text(text, fmt))) - set(range(VOCAB))) == bad
    needle = rf"vocabulary has {VOCAB} ids.*{bad}"
    with pytest.raises(LlmDitError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        encoder.encode_layers(text, [-2], prompt_format=fmt)
    with pytest.raises(LlmDitError, match=f"vocabulary has {VOCAB} ids"):
        encoder.embed([TEXTS[2], text])


# -- retrieval ------------------------------------------------------------------------------------------------


def assert_unit_norm(vectors: torch.Tensor) -> None:
    # Two 2-norms of D terms (normalize's and this one), each within (D + 2) eps32 relative to first order.
    norms = vectors.double().norm(dim=-1)
    assert (norms - 1).abs().max().item() <= worst_case(2 * (HIDDEN + 2), EPS32), norms


@pytest.mark.parametrize("task", [DEFAULT_EMBEDDING_TASK, EMBEDDING_QUERY_TASK])
def test_query_vectors_equal_sentence_transformers(encoder, sentence_model, task):
    assert sorted(TEXTS, key=len, reverse=True) == TEXTS  # sentence-transformers' order: the same batch
    got = encoder.embed(TEXTS, instruction=task)
    expected = sentence_model.encode(TEXTS, prompt=f"Instruct: {task}\nQuery:", convert_to_tensor=True)
    assert got.shape == (len(TEXTS), HIDDEN)
    assert_bit_equal(got, expected.cpu())
    assert_unit_norm(got)


def test_document_vectors_equal_sentence_transformers(encoder, sentence_model):
    got = encoder.embed(TEXTS)
    assert_bit_equal(got, sentence_model.encode(TEXTS, convert_to_tensor=True).cpu())
    assert_unit_norm(got)
    assert encoder.tokenizer.padding_side == "left"  # as released, after embed switched it for its batches
    one = encoder.embed(TEXTS[2])
    assert one.shape == (1, HIDDEN)
    assert_bit_equal(one, sentence_model.encode([TEXTS[2]], convert_to_tensor=True).cpu())


def test_released_query_prompt_is_the_instruction_format(sentence_model):
    assert sentence_model.prompts["query"] == f"Instruct: {EMBEDDING_QUERY_TASK}\nQuery:"
    assert EmbeddingEncoder.format_prompt("x", "instruction", EMBEDDING_QUERY_TASK) == (
        sentence_model.prompts["query"] + "x"
    )


# -- the checkpoint folder ------------------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise AssertionError("model weights were loaded")


@pytest.fixture
def no_embedding_weights(monkeypatch):
    """Loading the embedding model's weights fails the test."""
    monkeypatch.setattr(embedding_model, "load_embedding_model", _boom)
    monkeypatch.setattr(Qwen3Model, "from_pretrained", _boom)


def _copy(dest, weights: bytes | None = b""):
    """The tiny twin's files, with ``weights`` as model.safetensors (None: no weights file)."""
    shutil.copytree(tiny_embedding_path(), dest, ignore=shutil.ignore_patterns("*.safetensors"))
    if weights is not None:
        (dest / "model.safetensors").write_bytes(weights)
    return dest


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def _z_image(tmp_path):
    folder = _copy(tmp_path / "emb")
    (folder / "config.json").unlink()
    (folder / "model_index.json").write_text("{}")
    return folder


def _unlink(name):
    def make(tmp_path):
        folder = _copy(tmp_path / "emb")
        (folder / name).unlink()
        return folder

    return make


BAD_FOLDERS = {
    "missing": (lambda tmp: tmp / "nowhere", "does not exist"),
    "file": (lambda tmp: _copy(tmp / "emb") / "config.json", "is not a directory"),
    "no-config": (_unlink("config.json"), "has no config.json"),
    "z-image": (_z_image, "this is a Z-Image checkpoint"),
    "vl-model": (lambda tmp: _edit_config(_copy(tmp / "emb"), model_type="qwen3_vl"), 'model_type "qwen3_vl"'),
    "bad-vocab": (lambda tmp: _edit_config(_copy(tmp / "emb"), vocab_size=0), "vocab_size = 0"),
    "no-weights": (lambda tmp: _copy(tmp / "emb", None), "no model.safetensors"),
    "no-tokenizer": (_unlink("tokenizer.json"), "no tokenizer.json"),
    "no-tokenizer-config": (_unlink("tokenizer_config.json"), "no tokenizer_config.json"),
}


@pytest.mark.usefixtures("no_embedding_weights")
@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_folder_is_refused_before_weights_load(tmp_path, case):
    make, needle = BAD_FOLDERS[case]
    with pytest.raises(CheckpointError, match=needle):
        EmbeddingEncoder.from_pretrained(make(tmp_path), device="cpu", torch_dtype="fp32")


@pytest.mark.usefixtures("no_embedding_weights")
def test_from_pretrained_reads_json_only(tmp_path):
    folder = _copy(tmp_path / "emb", b"not weights")  # validation never opens it
    encoder = EmbeddingEncoder.from_pretrained(folder, device="cpu", torch_dtype="fp32")
    assert (encoder.num_layers, encoder.hidden_size, encoder.vocab_size) == (NUM_LAYERS, HIDDEN, VOCAB)
    assert encoder.path == folder
    assert EmbeddingEncoder.from_pretrained("tiny", device="cpu", torch_dtype="fp32").path == tiny_embedding_path()

"""The seed's ``EmbeddingExtractor`` API (conditioning/embedding_extractor.py) on the tiny Qwen3-Embedding twin.

References never come from the extractor itself: ``encode_for_zimage`` against :meth:`EmbeddingEncoder.encode_layers`
and the rows the pipeline's ``conditioning = "embedding"`` source composes for a run; ``extract`` against
``SentenceTransformer(path).encode`` (official retrieval vectors, Matryoshka ``truncate_dim``), :meth:`EmbeddingEncoder
.embed` and ``Qwen3Model`` loaded separately and run on one unpadded input. Bit for bit where the computation is the
same, otherwise within a bound derived next to the assertion (tests/README.md, "Tolerance policy").
"""

from __future__ import annotations

import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import Qwen3Model

from bounds import EPS32, assert_bit_equal, worst_case
from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
from llm_dit.conditioning.embedding_extractor import EmbeddingExtractor, ExtractionResult
from llm_dit.constants import DEFAULT_EMBEDDING_LAYER, DEFAULT_EMBEDDING_TASK, ENDOFTEXT_ID
from llm_dit.errors import LlmDitError
from llm_dit.models import embedding_model
from llm_dit.models.devices import quiet_hf
from llm_dit.models.embedding_model import EMBEDDING_QUERY_TASK, tiny_embedding_path

pytestmark = pytest.mark.numerics

HIDDEN = 32
# Longest first by characters: SentenceTransformer.encode sorts by descending length, so its batch is ours.
TEXTS = ["A tabby cat sleeping on a sunlit windowsill, warm light", "一只猫 in a neon-lit alley", "a cat"]
SEED_TASK = "Generate an embedding for text-to-image synthesis"  # seed 000's instruction


@pytest.fixture(scope="module")
def extractor() -> EmbeddingExtractor:
    return EmbeddingExtractor.from_pretrained(None, device="cpu", torch_dtype="fp32")


@pytest.fixture(scope="module")
def sentence_model() -> SentenceTransformer:
    with quiet_hf():
        return SentenceTransformer(str(tiny_embedding_path()), device="cpu")


@pytest.fixture(scope="module")
def reference() -> Qwen3Model:
    with quiet_hf():
        model = Qwen3Model.from_pretrained(tiny_embedding_path())
    return model.eval().requires_grad_(False)


def query(task: str) -> str:
    return f"Instruct: {task}\nQuery:"


def stacked(results: list[ExtractionResult]) -> torch.Tensor:
    return torch.stack([r.embeddings for r in results])


# -- encode_for_zimage ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "task"), [("chat", None), ("raw", None), ("instruction", None), ("instruction", SEED_TASK)]
)
@pytest.mark.parametrize("keep_eot", [False, True])
def test_encode_for_zimage_is_the_encoders_rows(extractor, fmt, task, keep_eot):
    layers = [DEFAULT_EMBEDDING_LAYER, -8]
    expected = extractor.encoder.encode_layers(TEXTS, layers, prompt_format=fmt, instruction=task, keep_eot=keep_eot)
    for layer in layers:
        got = extractor.encode_for_zimage(TEXTS, layer, prompt_format=fmt, instruction=task, keep_eot=keep_eot)
        assert isinstance(got, list) and len(got) == len(TEXTS)
        for rows, want in zip(got, expected, strict=True):
            assert_bit_equal(rows, want[layer])  # the same batch through the same code
    (alone,) = extractor.encoder.encode_layers(TEXTS[2], [DEFAULT_EMBEDDING_LAYER], prompt_format=fmt, instruction=task)
    one = extractor.encode_for_zimage(TEXTS[2], prompt_format=fmt, instruction=task)  # default layer -2
    assert isinstance(one, torch.Tensor) and one.shape[1] == HIDDEN
    assert_bit_equal(one, alone[DEFAULT_EMBEDDING_LAYER])


def test_encode_for_zimage_is_what_a_run_feeds_the_dit(extractor):
    """The seed's call on one prompt equals the features the pipeline composes for conditioning = "embedding" at the
    defaults, and for the instruction format with a task (one prompt per forward on both sides: the same computation).
    """
    from llm_dit.generation.pipeline import LlmDitPipeline
    from llm_dit.generation.request import GenerationRequest

    pipe = LlmDitPipeline.from_pretrained(None)
    text = "A cat sleeping in sunlight"
    cases = [
        ({}, {}),
        (
            {"embedding_layer": -6, "embedding_format": "instruction", "embedding_instruction": SEED_TASK},
            {"hidden_layer": -6, "prompt_format": "instruction", "instruction": SEED_TASK},
        ),
        ({"embedding_format": "raw", "embedding_keep_eot": True}, {"prompt_format": "raw", "keep_eot": True}),
    ]
    for params, kwargs in cases:
        (composed,) = pipe.caption_features([GenerationRequest.build(text, conditioning="embedding", **params)])
        assert_bit_equal(extractor.encode_for_zimage(text, **kwargs), composed.embeddings.cpu())


def test_encode_for_zimage_refuses_an_unknown_format(extractor):
    with pytest.raises(LlmDitError, match=r"unknown embedding_format 'query'.*chat, raw, instruction"):
        extractor.encode_for_zimage("a cat", prompt_format="query")


# -- extract: the official vectors -------------------------------------------------------------------------------


def assert_unit_norm(vectors: torch.Tensor, width: int) -> None:
    # Two 2-norms of `width` terms (normalize's and this one), each within (width + 2) eps32 relative, first order.
    norms = vectors.double().norm(dim=-1)
    assert (norms - 1).abs().max().item() <= worst_case(2 * (width + 2), EPS32), norms


@pytest.mark.parametrize("task", [SEED_TASK, EMBEDDING_QUERY_TASK, None])
def test_last_token_normalized_is_the_official_vector(extractor, sentence_model, task):
    assert sorted(TEXTS, key=len, reverse=True) == TEXTS  # sentence-transformers' order: the same batch
    results = extractor.extract(TEXTS, instruction=task, pooling="last_token", normalize=True)
    got = stacked(results)
    prompt = None if task is None else query(task)
    assert_bit_equal(got, sentence_model.encode(TEXTS, prompt=prompt, convert_to_tensor=True).cpu())
    assert_bit_equal(got, extractor.encoder.embed(TEXTS, instruction=task))
    assert_unit_norm(got, HIDDEN)
    tokenizer = sentence_model.tokenizer
    for text, result in zip(TEXTS, results, strict=True):
        formatted = text if task is None else query(task) + text
        assert result.formatted_text == formatted
        assert result.token_ids == tokenizer(formatted)["input_ids"]  # the appended <|endoftext|> last
        assert result.token_ids[-1] == ENDOFTEXT_ID and result.token_count == len(result.token_ids)
        assert (result.instruction, result.pooling, result.hidden_layer) == (task, "last_token", -1)
        assert result.normalized and result.embedding_dim == HIDDEN and result.embeddings.shape == (HIDDEN,)


def test_the_seeds_call_gives_the_full_sequence(extractor, sentence_model, reference):
    """``extract("A cat sleeping", instruction=...)`` with the defaults: every row of the query at the final-normed
    layer, unnormalised (the exact unpadded run), <|endoftext|> included."""
    result = extractor.extract("A cat sleeping", instruction=SEED_TASK)
    assert isinstance(result, ExtractionResult)
    ids = sentence_model.tokenizer(query(SEED_TASK) + "A cat sleeping")["input_ids"]
    with torch.no_grad():
        states = reference(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert result.token_ids == ids and result.pooling == "full_sequence" and not result.normalized
    assert_bit_equal(result.embeddings, states[-1][0])


@pytest.mark.parametrize("layer", [-1, -2, 5])
def test_last_token_of_any_layer_equals_the_model(extractor, sentence_model, reference, layer):
    """One text per call: no padding, the computation of one unpadded Qwen3Model run."""
    for text in TEXTS:
        formatted = query(DEFAULT_EMBEDDING_TASK) + text
        ids = sentence_model.tokenizer(formatted)["input_ids"]
        with torch.no_grad():
            states = reference(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        got = extractor.extract(text, DEFAULT_EMBEDDING_TASK, pooling="last_token", hidden_layer=layer)
        assert_bit_equal(got.embeddings, states[layer][0, -1])
        full = extractor.extract(text, DEFAULT_EMBEDDING_TASK, hidden_layer=layer)
        assert_bit_equal(full.embeddings, states[layer][0])
        assert full.token_ids == got.token_ids == ids


def test_full_sequence_of_a_batch_is_the_encoders_right_padded_rows(extractor):
    results = extractor.extract(TEXTS, SEED_TASK, hidden_layer=-3, normalize=True, embedding_dim=20)
    rows = extractor.encoder.encode_layers(
        TEXTS, [-3], prompt_format="instruction", instruction=SEED_TASK, keep_eot=True
    )
    for result, want in zip(results, rows, strict=True):
        expected = torch.nn.functional.normalize(want[-3][:, :20], p=2, dim=-1)
        assert_bit_equal(result.embeddings, expected)  # truncate, then normalise each row
        assert result.embeddings.shape == (len(result.token_ids), 20)
        assert_unit_norm(result.embeddings, 20)


# -- extract: Matryoshka truncation ------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 8, HIDDEN])
def test_embedding_dim_matches_sentence_transformers_truncate_dim(extractor, sentence_model, k):
    """``truncate_dim=k`` truncates the output of the model's Normalize module; with ``normalize_embeddings=True``
    it normalises again: the Matryoshka vector (first k dims, unit length), which is ours. Without it, the first k
    dims of the unit vector (not unit), which is our normalised full vector cut at k."""
    prompt, encode = query(SEED_TASK), sentence_model.encode
    ours = stacked(extractor.extract(TEXTS, SEED_TASK, pooling="last_token", normalize=True, embedding_dim=k))
    theirs = encode(TEXTS, prompt=prompt, convert_to_tensor=True, truncate_dim=k, normalize_embeddings=True).cpu()
    assert ours.shape == theirs.shape == (len(TEXTS), k)
    # theirs normalises twice (width D, then k), ours once at k: three 2-norms of at most D terms, each a relative
    # error within (D + 2) eps32 of the unit-length components (first order).
    err = (ours.double() - theirs.double()).abs().max().item()
    assert err <= worst_case(3 * (HIDDEN + 2), EPS32), err
    assert_unit_norm(ours, k)
    full = stacked(extractor.extract(TEXTS, SEED_TASK, pooling="last_token", normalize=True))
    cut = encode(TEXTS, prompt=prompt, convert_to_tensor=True, truncate_dim=k).cpu()
    assert_bit_equal(cut, full[:, :k])
    raw = stacked(extractor.extract(TEXTS, SEED_TASK, pooling="last_token", embedding_dim=k))
    assert_bit_equal(raw, stacked(extractor.extract(TEXTS, SEED_TASK, pooling="last_token"))[:, :k])


# -- refusals, before any weights load ---------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise AssertionError("model weights were loaded")


@pytest.fixture
def unloaded(monkeypatch: pytest.MonkeyPatch) -> EmbeddingExtractor:
    """A fresh extractor of the tiny twin whose weights must not load."""
    monkeypatch.setattr(embedding_model, "load_embedding_model", _boom)
    monkeypatch.setattr(Qwen3Model, "from_pretrained", _boom)
    extractor = EmbeddingExtractor.from_pretrained("tiny", device="cpu", torch_dtype="fp32")
    assert isinstance(extractor.encoder, EmbeddingEncoder) and extractor.encoder.path == tiny_embedding_path()
    assert (extractor.hidden_size, extractor.num_layers) == (HIDDEN, 36)
    return extractor


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"pooling": "mean"}, r"pooling 'mean' is not valid; use one of full_sequence, last_token"),
        ({"embedding_dim": 0}, r"embedding_dim 0 is not valid: give 1\.\.32"),
        ({"embedding_dim": HIDDEN + 1}, r"embedding_dim 33 is not valid: give 1\.\.32"),
        ({"embedding_dim": True}, r"embedding_dim True is not valid"),
        ({"embedding_dim": "8"}, r"embedding_dim '8' is not valid"),
        ({"normalize": "yes"}, r"normalize must be true or false"),
        ({"instruction": " "}, r"instruction must be a non-empty task"),
        ({"hidden_layer": 37}, r"hidden layer 37 is out of range.*-37\.\.36"),
        ({"hidden_layer": 1.5}, r"hidden_layer must be an integer"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(unloaded, kwargs, needle):
    with pytest.raises(LlmDitError, match=needle) as caught:
        unloaded.extract("a cat", **kwargs)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(("text", "needle"), [([], "at least one text"), (["a", 3], "text 1 must be a string")])
def test_bad_texts_are_refused(unloaded, text, needle):
    with pytest.raises(LlmDitError, match=needle):
        unloaded.extract(text)
    with pytest.raises(LlmDitError, match=needle):
        unloaded.encode_for_zimage(text)

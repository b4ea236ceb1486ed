"""The text encoder (encoder.py, prompt.py) against the tokenizer's chat template and the transformers model.

Expected values never come from llm-dit itself: formatting is compared with ``tokenizer.apply_chat_template``,
token ids with ``tokenizer(text)``, hidden states with ``Qwen3Model(..., output_hidden_states=True)`` loaded
separately from the checkpoint: bit for bit where the forward is the same (one prompt, no padding, same dtype),
otherwise (batches, padding) against the float64 model within the rounding bound of tests/bounds.py.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen3Model

from bounds import EPS32, assert_within_rounding, count_reductions, rounding_bound
from llm_dit.conditioning.prompt import format_prompt
from llm_dit.conditioning.text_encoder import ZImageTextEncoder
from llm_dit.errors import LlmDitError
from llm_dit.models import checkpoint

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

NUM_LAYERS = 36
HIDDEN = 32
CAP = 64

PROMPTS = [
    "A tabby cat sleeping on a sunlit windowsill",
    "一只猫 in a neon-lit Tokyo alley, rain, 35mm photo",
    "red",
    "Abstract geometric patterns in blue and gold\nwith a second line, and a much longer tail of words to pad it",
]
SYSTEM = "You are an assistant that describes images in detail."
LONG_PROMPT = " ".join(
    f"{w} {i}" for i, w in enumerate(["mountain", "river", "castle", "dragon", "forest", "sunset"] * 4)
)  # ~100 tokens, over CAP
LONG_MODES = ["truncate", "interpolate", "pool", "attention_pool"]


def _no_model():
    raise AssertionError("the text encoder model must not be loaded here")


@pytest.fixture(scope="module")
def encoder(tiny_checkpoint):
    return ZImageTextEncoder.from_pretrained(tiny_checkpoint, device="cpu", torch_dtype="float32")


@pytest.fixture(scope="module")
def tokenizer(encoder, tiny_checkpoint):
    # The encoder's tokenizer is what checkpoint.load_tokenizer(tiny_checkpoint) returns; reuse it (loading
    # the 151k-token tokenizer again costs seconds).
    tok = encoder.tokenizer
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.name_or_path.endswith("tokenizer")
    return tok


@pytest.fixture(scope="module")
def reference_models(tiny_checkpoint):
    """Independently loaded transformers models, {dtype: Qwen3Model}."""
    path = tiny_checkpoint / "text_encoder"
    return {
        dtype: Qwen3Model.from_pretrained(path, dtype=dtype).eval().requires_grad_(False)
        for dtype in (torch.float32, torch.bfloat16, torch.float64)
    }


@pytest.fixture(scope="module")
def bf16_encoder(tokenizer, tiny_checkpoint):
    return ZImageTextEncoder(
        tokenizer,
        model_loader=lambda: checkpoint.load_text_encoder(tiny_checkpoint, "cpu", torch.bfloat16),
        num_layers=NUM_LAYERS,
        max_caption_tokens=1504,
    )


@pytest.fixture(scope="module")
def cold_encoder(tokenizer):
    """An encoder whose model loader fails: anything that loads the model raises AssertionError."""
    return ZImageTextEncoder(tokenizer, model_loader=_no_model, num_layers=NUM_LAYERS)


def template(tokenizer, prompt, *, system=None, enable_thinking=True, reasoning=None):
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    if reasoning is not None:
        messages.append({"role": "assistant", "content": "", "reasoning_content": reasoning})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        assert text.endswith("<|im_end|>\n")
        return text.removesuffix("<|im_end|>\n")
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=enable_thinking
    )


def hidden_states(model, ids, pad_to=None, pad_id=151643):
    """All hidden states [37, L, D] of one prompt, straight from transformers (optionally right-padded)."""
    length = len(ids)
    total = max(length, pad_to or 0)
    input_ids = torch.full((1, total), pad_id, dtype=torch.long)
    input_ids[0, :length] = torch.tensor(ids)
    mask = torch.zeros((1, total), dtype=torch.long)
    mask[0, :length] = 1
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.hidden_states) == NUM_LAYERS + 1
    return [h[0, :length] for h in out.hidden_states]


def exact_states(reference_models, ids):
    """Float64 hidden states of one prompt (unpadded) and the rounding factor of a float32 run of its forward."""
    with count_reductions(reference_models[torch.float64]) as counted:
        states = hidden_states(reference_models[torch.float64], ids)
    return states, counted.total


def assert_exact_rows(reference_models, encoded, layer=-2):
    """A float32 encoding (any batch, any padding: rounding differs) within rounding of the float64 model."""
    states, factor = exact_states(reference_models, encoded.token_ids)
    assert_within_rounding(encoded.embeddings, states[layer], factor)


def split_template(text, prompt):
    start = text.index(prompt)
    return text[:start], text[start + len(prompt) :]


# -- formatting -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [*PROMPTS, "", " leading and trailing spaces ", "\nnewlines\n"])
def test_formatter_matches_chat_template(tokenizer, prompt):
    assert format_prompt(prompt).text == template(tokenizer, prompt, enable_thinking=True)
    assert format_prompt(prompt, think_block="none").text == template(tokenizer, prompt, enable_thinking=True)
    assert format_prompt(prompt, think_block="empty").text == template(tokenizer, prompt, enable_thinking=False)
    assert format_prompt(prompt, system_prompt=SYSTEM).text == template(tokenizer, prompt, system=SYSTEM)
    assert format_prompt(prompt, SYSTEM, "empty").text == template(
        tokenizer, prompt, system=SYSTEM, enable_thinking=False
    )


@pytest.mark.parametrize(
    "thought", ["The user wants a cat.", "line one\nline two", "  padded  ", "\nplan\n", "\n\ntwo newlines\n\n"]
)
def test_think_block_text_matches_reasoning_content(tokenizer, thought):
    prompt = PROMPTS[0]
    assert format_prompt(prompt, think_block=thought).text == template(tokenizer, prompt, reasoning=thought)
    assert format_prompt(prompt, SYSTEM, thought).text == template(tokenizer, prompt, system=SYSTEM, reasoning=thought)


def test_formatted_prompt_parts(tokenizer):
    formatted = format_prompt(PROMPTS[1], SYSTEM, "empty")
    prefix, suffix = split_template(template(tokenizer, PROMPTS[1], system=SYSTEM, enable_thinking=False), PROMPTS[1])
    assert (formatted.prefix, formatted.content, formatted.suffix) == (prefix, PROMPTS[1], suffix)


def test_encoder_settings_reach_the_formatted_text(encoder, tokenizer):
    prompt = PROMPTS[0]
    cases = [
        ({}, template(tokenizer, prompt)),
        ({"think_block": "empty"}, template(tokenizer, prompt, enable_thinking=False)),
        ({"system_prompt": SYSTEM}, template(tokenizer, prompt, system=SYSTEM)),
        ({"think_block": "Thinking."}, template(tokenizer, prompt, reasoning="Thinking.")),
    ]
    for overrides, expected in cases:
        (tok,) = encoder.tokenize(prompt, **overrides)
        assert tok.formatted.text == expected, overrides
        assert tok.input_ids == tokenizer(expected)["input_ids"]
    empty_think = encoder.tokenize(prompt, think_block="empty")[0]
    assert empty_think.token_count == encoder.tokenize(prompt)[0].token_count + 4  # the 4-token empty block


# -- encode -----------------------------------------------------------------------------------------------------


def test_encode_returns_rows_ids_and_text(encoder, tokenizer, reference_models):
    results = encoder.encode(PROMPTS)
    assert len(results) == len(PROMPTS)
    for prompt, result in zip(PROMPTS, results, strict=True):
        text = template(tokenizer, prompt)
        ids = tokenizer(text)["input_ids"]
        assert result.formatted_prompt == text
        assert result.token_ids == ids
        assert result.token_count == len(ids)
        assert result.embeddings.shape == (len(ids), HIDDEN)
        assert result.embeddings.dtype == torch.float32
        assert result.hidden_layer == -2
        assert not result.truncated and not result.compressed
        assert_exact_rows(reference_models, result)  # batch of 4 padded to 512 vs one unpadded prompt


@pytest.mark.parametrize("padding", ["longest", "diffusers"])
def test_batch_equals_one_at_a_time(encoder, reference_models, padding):
    together = encoder.encode(PROMPTS, padding=padding)
    lengths = {r.length for r in together}
    assert len(lengths) == len(PROMPTS)  # really different lengths, so padding is exercised
    for prompt, batched in zip(PROMPTS, together, strict=True):
        (alone,) = encoder.encode(prompt, padding=padding)
        assert batched.token_ids == alone.token_ids
        # different batch shapes: both within rounding of the float64 model, not bit-equal to each other
        assert_exact_rows(reference_models, batched)
        assert_exact_rows(reference_models, alone)


def test_padding_modes_agree(encoder, reference_models):
    longest = encoder.encode(PROMPTS, padding="longest")
    diffusers = encoder.encode(PROMPTS, padding="diffusers")
    for a, b in zip(longest, diffusers, strict=True):
        assert a.token_ids == b.token_ids
        assert_exact_rows(reference_models, a)
        assert_exact_rows(reference_models, b)


def test_encoded_prompt_records_the_encoder_device(encoder, bf16_encoder):
    assert encoder.encode("a cat")[0].encoder_device == "cpu/float32"
    assert bf16_encoder.encode("a cat")[0].encoder_device == "cpu/bfloat16"


@pytest.mark.parametrize(("name", "value"), [("device", "cpu"), ("torch_dtype", "bfloat16")])
def test_load_time_settings_cannot_change_per_call(cold_encoder, name, value):
    # They were silently ignored (the model is placed when it loads); now refused, before any model loads.
    for call in (cold_encoder.encode, cold_encoder.tokenize, cold_encoder.resolve):
        args = () if call == cold_encoder.resolve else ("a cat",)
        with pytest.raises(LlmDitError, match=rf"'{name}' cannot be changed per call.*fixed when the encoder loads"):
            call(*args, **{name: value})
    with pytest.raises(LlmDitError, match=name):
        cold_encoder.encode_layers("a cat", [-2], **{name: value})


# -- hidden layers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, -1, -2, -6, 36, -37])
def test_hidden_layer_selection(encoder, tokenizer, reference_models, layer):
    prompt = PROMPTS[1]
    (result,) = encoder.encode(prompt, hidden_layer=layer)
    ids = tokenizer(template(tokenizer, prompt))["input_ids"]
    states, factor = exact_states(reference_models, ids)
    assert_within_rounding(result.embeddings, states[layer], factor)
    assert result.hidden_layer == layer
    # and it is not some other layer: in float64 the neighbouring layer lies more than 10 bounds away, so the
    # comparison above tells them apart
    other = states[layer - 1] if layer != -37 else states[1]
    assert (states[layer] - other).abs().max() > 10 * rounding_bound(states[layer], factor)


def test_layer_indices_alias_as_in_transformers(encoder):
    (a,) = encoder.encode("alias", hidden_layer=-2)
    (b,) = encoder.encode("alias", hidden_layer=35)
    (c,) = encoder.encode("alias", hidden_layer=-37)
    (d,) = encoder.encode("alias", hidden_layer=0)
    assert torch.equal(a.embeddings, b.embeddings)
    assert torch.equal(c.embeddings, d.embeddings)


@pytest.mark.parametrize("layer", [-38, 37])
def test_out_of_range_layer_in_encode_layers_raises_before_loading(cold_encoder, layer):
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        cold_encoder.encode_layers("a cat", [-2, layer])


@pytest.mark.parametrize("layer", [-38, 37])
def test_out_of_range_layer_raises_before_loading(tokenizer, cold_encoder, layer):
    # LlmDitError naming the range, and no model loads (the loader would raise AssertionError).
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        cold_encoder.encode("a cat", hidden_layer=layer)
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        cold_encoder.tokenize("a cat", hidden_layer=layer)
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        ZImageTextEncoder(tokenizer, model_loader=_no_model, num_layers=NUM_LAYERS, hidden_layer=layer)
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        cold_encoder.encode("a cat", layer_weights={-2: 0.5, layer: 0.5})


def test_layer_range_follows_the_model_depth(tokenizer):
    # A 4-layer encoder has hidden states -5..4; its own check names that range.
    small = ZImageTextEncoder(tokenizer, model_loader=_no_model, num_layers=4)
    with pytest.raises(LlmDitError, match=r"-5\.\.4"):
        small.encode_layers("x", [5])
    with pytest.raises(LlmDitError, match=r"-5\.\.4"):
        small.encode_layers("x", [-6])


def test_encode_layers_runs_one_forward(encoder):
    layers = [-2, -6, -12]
    calls = []
    handle = encoder.model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        together = encoder.encode_layers(PROMPTS, layers)
    finally:
        handle.remove()
    assert len(calls) == 1
    assert len(together) == len(PROMPTS)
    for layer in layers:
        separate = encoder.encode(PROMPTS, hidden_layer=layer)
        for states, single in zip(together, separate, strict=True):
            assert set(states) == set(layers)
            assert torch.equal(states[layer], single.embeddings)  # the same batch, padding and forward
    # the layers differ by more than rounding could make: twice the bound of prompt 0's (unpadded) forward
    with count_reductions(encoder.model) as counted:
        encoder.encode(PROMPTS[0], padding="longest")
    a, b = together[0][-2], together[0][-6]
    assert (a - b).abs().max() > 2 * rounding_bound(torch.stack([a, b]), counted.total)


def test_layer_weights_blend(encoder, tokenizer, reference_models):
    prompt = PROMPTS[0]
    ids = tokenizer(template(tokenizer, prompt))["input_ids"]
    h, factor = exact_states(reference_models, ids)
    # Each layer is within eps * factor * max|layer| of float64; the blend adds 4 roundings (2 products, a sum,
    # the weight normalisation) and, weights summing to 1, keeps the bound relative to the larger layer.
    bound = rounding_bound(torch.stack([h[-2], h[-5]]), factor + 4)
    (blend,) = encoder.encode(prompt, layer_weights={-2: 0.7, -5: 0.3})
    assert (blend.embeddings.double() - (0.7 * h[-2] + 0.3 * h[-5])).abs().max() <= bound
    assert blend.hidden_layer is None
    assert blend.layer_weights == {-2: 0.7, -5: 0.3}
    (mean,) = encoder.encode(prompt, layer_weights={-2: 2, -5: 2})
    assert (mean.embeddings.double() - (h[-2] + h[-5]) / 2).abs().max() <= bound
    (string_form,) = encoder.encode(prompt, layer_weights="-2:0.7,-5:0.3")
    torch.testing.assert_close(string_form.embeddings, blend.embeddings, rtol=0, atol=0)


def test_per_call_hidden_layer_replaces_an_encoder_blend(tokenizer, encoder, tiny_checkpoint):
    blending = ZImageTextEncoder.from_pretrained(
        tiny_checkpoint, device="cpu", torch_dtype="float32", layer_weights={-2: 0.5, -5: 0.5}
    )
    blending._model = encoder.model  # share the loaded weights
    (single,) = blending.encode(PROMPTS[0], hidden_layer=-10)
    (expected,) = encoder.encode(PROMPTS[0], hidden_layer=-10)
    assert single.hidden_layer == -10 and single.layer_weights is None
    assert torch.equal(single.embeddings, expected.embeddings)


# -- long prompts -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_parts(tokenizer):
    text = template(tokenizer, LONG_PROMPT)
    prefix, suffix = split_template(text, LONG_PROMPT)
    ids = tokenizer(text)["input_ids"]
    prefix_ids = tokenizer(prefix)["input_ids"]
    suffix_ids = tokenizer(suffix)["input_ids"]
    assert len(ids) > CAP + 10
    assert ids[: len(prefix_ids)] == prefix_ids and ids[len(ids) - len(suffix_ids) :] == suffix_ids
    return ids, prefix_ids, suffix_ids


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("mode", LONG_MODES)
def test_long_prompt_modes(encoder, bf16_encoder, reference_models, long_parts, mode, dtype):
    ids, prefix_ids, suffix_ids = long_parts
    p, s = len(prefix_ids), len(suffix_ids)
    enc = encoder if dtype == torch.float32 else bf16_encoder
    (result,) = enc.encode(LONG_PROMPT, max_text_tokens=CAP, long_prompt_mode=mode, padding="longest")
    emb = result.embeddings
    assert emb.dtype == dtype
    assert emb.shape[1] == HIDDEN
    assert emb.shape[0] <= CAP
    assert torch.isfinite(emb.float()).all()
    assert result.token_count == len(ids)
    assert result.long_prompt_mode == mode
    # One prompt, no padding, the same dtype: our forward is transformers' own, bit for bit.
    model = reference_models[dtype]

    if mode == "truncate":
        keep = CAP - p - s
        expected_ids = ids[:p] + ids[p : p + keep] + suffix_ids
        assert result.token_ids == expected_ids
        assert result.token_ids[-s:] == suffix_ids
        assert len(expected_ids) == CAP == emb.shape[0]
        assert result.truncated and not result.compressed
        assert torch.equal(emb, hidden_states(model, expected_ids)[-2])
        return

    assert result.compressed and not result.truncated
    assert result.token_ids == ids
    assert emb.shape[0] == CAP
    full = hidden_states(model, ids)[-2]
    assert torch.equal(emb[:p], full[:p])
    assert torch.equal(emb[-s:], full[-s:])
    content, target = full[p : len(ids) - s].float(), CAP - p - s
    out = emb[p : CAP - s].float()
    n = content.shape[0]
    # Expected content rows, written out row by row from the documented definitions.
    weights = torch.exp(torch.nn.functional.cosine_similarity(content, content.mean(0, keepdim=True), dim=1))
    expected = []
    for i in range(target):
        if mode == "interpolate":  # linear, align_corners=True
            pos = i * (n - 1) / (target - 1)
            lo = min(int(pos), n - 2)
            frac = pos - lo
            expected.append(content[lo] * (1 - frac) + content[lo + 1] * frac)
            continue
        lo, hi = (i * n) // target, -((-(i + 1) * n) // target)  # floor(i*n/T) .. ceil((i+1)*n/T)
        if mode == "pool":
            expected.append(content[lo:hi].mean(0))
        else:  # attention_pool: softmax of cos(row, mean row) over the window
            w = weights[lo:hi] / weights[lo:hi].sum()
            expected.append((w[:, None] * content[lo:hi]).sum(0))
    # Both sides start from the same rows and compute in float32, each within (interpolate) 4n + 6 eps (the
    # position i (n-1)/(T-1) is rounded: up to 2n eps of a row difference), (pool) w + 1, (attention_pool)
    # n + 3D + 2w + 8 (mean row, cosine, exp, two pooled sums, their ratio) eps of max|content|, w the
    # largest window; ours is then rounded to its dtype (half an ulp).
    window = -(-n // target) + 1
    factor = 2 * max(4 * n + 6, window + 1, n + 3 * HIDDEN + 2 * window + 8)
    bound = (EPS32 * factor + torch.finfo(dtype).eps / 2) * content.abs().max().item()
    assert (out - torch.stack(expected)).abs().max() <= bound
    if mode == "interpolate":
        assert (out[0] - content[0]).abs().max() <= bound
        assert (out[-1] - content[-1]).abs().max() <= bound


def test_long_prompt_within_cap_is_untouched(encoder):
    (capped,) = encoder.encode(PROMPTS[0], max_text_tokens=CAP, long_prompt_mode="pool")
    (plain,) = encoder.encode(PROMPTS[0])
    assert not capped.truncated and not capped.compressed
    torch.testing.assert_close(capped.embeddings, plain.embeddings, rtol=0, atol=0)


def test_mode_none_raises_over_cap_without_loading(cold_encoder):
    with pytest.raises(LlmDitError, match=f"over the cap of {CAP}"):
        cold_encoder.encode(LONG_PROMPT, max_text_tokens=CAP, long_prompt_mode="none")
    with pytest.raises(LlmDitError, match="cap"):
        cold_encoder.tokenize(LONG_PROMPT, max_text_tokens=CAP, long_prompt_mode="none")


@pytest.mark.parametrize("mode", LONG_MODES)
def test_template_longer_than_cap_raises(cold_encoder, mode):
    long_system = "You are a meticulous visual artist who plans every single detail of a scene. " * 3
    thought = "First I think about composition, then light, then colour, then texture. " * 2
    with pytest.raises(LlmDitError, match=r"system prompt|think block"):
        cold_encoder.encode(
            "a cat", system_prompt=long_system, think_block=thought, max_text_tokens=CAP, long_prompt_mode=mode
        )


def test_tokenize_needs_no_model(cold_encoder, tokenizer):
    toks = cold_encoder.tokenize(PROMPTS, system_prompt=SYSTEM, think_block="empty")
    for prompt, tok in zip(PROMPTS, toks, strict=True):
        text = template(tokenizer, prompt, system=SYSTEM, enable_thinking=False)
        prefix, suffix = split_template(text, prompt)
        assert tok.formatted.text == text
        assert tok.input_ids == tokenizer(text)["input_ids"]
        assert tok.token_count == len(tok.input_ids)
        assert tok.prefix_len == len(tokenizer(prefix)["input_ids"])
        assert tok.suffix_len == len(tokenizer(suffix)["input_ids"])
        assert not tok.truncated and not tok.compress
    (long,) = cold_encoder.tokenize(LONG_PROMPT, max_text_tokens=CAP, long_prompt_mode="truncate")
    assert long.truncated and len(long.input_ids) == CAP
    assert cold_encoder._model is None


def test_more_prompts_than_one_encoder_batch(encoder, reference_models):
    prompts = [f"prompt number {i} " + "word " * (i % 5) for i in range(encoder.batch_size + 3)]
    calls = []
    handle = encoder.model.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        together = encoder.encode(prompts, padding="longest")
    finally:
        handle.remove()
    assert len(calls) == 2
    assert [r.formatted_prompt for r in together] == [format_prompt(p).text for p in prompts]
    for i in (0, encoder.batch_size - 1, encoder.batch_size, len(prompts) - 1):
        (alone,) = encoder.encode(prompts[i], padding="longest")
        assert_exact_rows(reference_models, together[i])  # batches of different shapes: both within rounding
        assert_exact_rows(reference_models, alone)

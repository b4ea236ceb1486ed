"""The Qwen3-VL conditioning source (conditioning/vl_encoder.py) against transformers on the tiny Qwen3-VL twin.

Expected values never come from llm-dit itself: the chat text is written out by hand, hidden states come from
``Qwen3VLForConditionalGeneration`` loaded separately from the same folder and run on the processor's inputs, the
token modes from a walk over the ids in Python, captions from ``model.generate`` seeded by hand. Both runs are one
unpadded float32 forward of the same inputs in this process (the same computation): compared bit for bit.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import Qwen3VLForConditionalGeneration

from bounds import assert_bit_equal
from llm_dit.conditioning.vl_encoder import VLEncoder, VLForward, token_mode_rows, vl_messages
from llm_dit.constants import DEFAULT_CAPTION_PROMPT, IMAGE_PAD_ID, VISION_END_ID, VISION_START_ID, VL_TOKEN_MODES
from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.models import vl
from llm_dit.models.devices import quiet_hf
from llm_dit.models.vl import load_vl_processor, tiny_vl_path, vl_image_token_count

pytestmark = pytest.mark.numerics  # float results compared bit for bit: CI runs these again with 2 threads

NUM_LAYERS = 36
HIDDEN = 32
SYSTEM = "You are an assistant that looks at pictures."

RED = Image.new("RGB", (64, 64), (200, 30, 30))  # 64 image tokens (the 256x256 minimum area)
NOISE = Image.fromarray(  # 96x64: 70 image tokens, so the two images' spans differ and their order shows
    (torch.rand(64, 96, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8).numpy()
)

# id -> (images, text, system prompt)
CASES = {
    "red": ([RED], "a cat", None),
    "red+noise": ([RED, NOISE], "a cat on a mat", None),
    "red/system": ([RED], "a cat", SYSTEM),
    "noise+red/system": ([NOISE, RED], "two pictures", SYSTEM),
    "no-image": ([], "a cat", None),
}
IMAGE_CASES = [case for case, (images, _, _) in CASES.items() if images]

VISION = "<|vision_start|><|image_pad|><|vision_end|>"


def expected_text(image_count: int, text: str, system: str | None = None) -> str:
    """The Qwen3-VL Instruct template's rendering, by hand."""
    head = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{head}<|im_start|>user\n{VISION * image_count}{text}<|im_end|>\n<|im_start|>assistant\n"


def hand_rows(ids: list[int], mode: str) -> list[bool]:
    """The rows of ``mode``, walking the ids: a span runs from a <|vision_start|> to its <|vision_end|>."""
    keep, inside = [], False
    for token in ids:
        if token == VISION_START_ID:
            assert not inside, "nested vision span"
            inside = True
        in_span = inside
        if token == VISION_END_ID:
            assert inside, "vision end without start"
            inside = False
        if token == IMAGE_PAD_ID:
            assert in_span, "image pad outside a span"
        keep.append(
            {"full": True, "image_only": in_span, "text_only": not in_span, "image_no_markers": token == IMAGE_PAD_ID}[
                mode
            ]
        )
    assert not inside, "unclosed vision span"
    return keep


def spans(ids: list[int]) -> list[list[int]]:
    """The ids of each vision span, markers included, in order."""
    out: list[list[int]] = []
    current: list[int] | None = None
    for token in ids:
        if token == VISION_START_ID:
            current = []
        if current is not None:
            current.append(token)
        if token == VISION_END_ID and current is not None:
            out.append(current)
            current = None
    return out


@pytest.fixture(scope="module")
def encoder():
    return VLEncoder.from_pretrained(None, device="cpu", torch_dtype="fp32")


@pytest.fixture(scope="module")
def reference():
    """The model and processor loaded independently of llm-dit's loader."""
    path = tiny_vl_path()
    with quiet_hf():
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(path))
    return model.eval().requires_grad_(False), load_vl_processor(path)


@pytest.fixture(scope="module")
def forwards(encoder):
    return {case: encoder.forward(images, text, system) for case, (images, text, system) in CASES.items()}


def reference_run(reference, images, text, system=None):
    model, processor = reference
    inputs = processor(
        text=[expected_text(len(images), text, system)], images=list(images) or None, return_tensors="pt"
    )
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    return inputs, out


# -- the forward ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_forward_equals_transformers_hidden_states(forwards, reference, case):
    images, text, system = CASES[case]
    inputs, out = reference_run(reference, images, text, system)
    forward = forwards[case]
    assert isinstance(forward, VLForward)
    assert forward.input_ids == inputs["input_ids"][0].tolist()
    assert forward.length == inputs["input_ids"].shape[1]
    assert forward.num_layers == NUM_LAYERS
    assert len(forward.hidden_states) == len(out.hidden_states) == NUM_LAYERS + 1
    for layer, (got, expected) in enumerate(zip(forward.hidden_states, out.hidden_states, strict=True)):
        assert got.shape == (forward.length, HIDDEN), layer
        assert got.dtype == torch.float32
        assert_bit_equal(got, expected[0])  # [1..3]: the image rows as transformers captures them (DeepStack)
    assert forward.image_token_counts == [vl_image_token_count(*image.size) for image in images]


def test_formatted_text_is_the_instruct_template(encoder, forwards):
    one = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>\n<|im_start|>assistant\n"
    assert forwards["red"].formatted_text == one
    assert forwards["red/system"].formatted_text == f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + one
    assert forwards["red+noise"].formatted_text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>"
        "a cat on a mat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert forwards["no-image"].formatted_text == "<|im_start|>user\na cat<|im_end|>\n<|im_start|>assistant\n"
    for case, (images, text, system) in CASES.items():
        assert forwards[case].formatted_text == expected_text(len(images), text, system), case
        assert encoder.format(len(images), text, system) == expected_text(len(images), text, system), case
    # The messages: system turn first when given, then one user turn with the images before the text.
    assert vl_messages(2, "hi", "sys") == [
        {"role": "system", "content": [{"type": "text", "text": "sys"}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]},
    ]
    assert vl_messages(1, "hi", "") == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}
    ]


# -- token modes ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", VL_TOKEN_MODES)
@pytest.mark.parametrize("case", CASES)
def test_token_modes_match_a_walk_over_the_ids(forwards, case, mode):
    forward = forwards[case]
    expected = hand_rows(forward.input_ids, mode)
    rows = token_mode_rows(forward, mode)
    assert rows.dtype == torch.bool
    assert rows.tolist() == expected
    assert token_mode_rows(forward.input_ids, mode).tolist() == expected  # the ids alone give the same rows


def test_token_modes_on_hand_written_ids():
    s, e, p = VISION_START_ID, VISION_END_ID, IMAGE_PAD_ID
    ids = [7, s, p, p, e, 8, 9, s, p, e, 10]
    assert token_mode_rows(ids, "full").tolist() == [True] * len(ids)
    assert token_mode_rows(ids, "image_only").tolist() == [0, 1, 1, 1, 1, 0, 0, 1, 1, 1, 0]
    assert token_mode_rows(ids, "image_no_markers").tolist() == [0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    assert token_mode_rows(ids, "text_only").tolist() == [1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 1]
    # Adjacent images: the second span starts right after the first ends.
    back_to_back = [s, p, e, s, p, p, e]
    assert token_mode_rows(back_to_back, "text_only").tolist() == [False] * 7
    assert token_mode_rows(back_to_back, "image_no_markers").tolist() == [0, 1, 0, 0, 1, 1, 0]
    assert token_mode_rows([1, 2, 3], "image_only").tolist() == [False] * 3


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_rows_follow_the_processor_rule(forwards, case):
    images = CASES[case][0]
    forward = forwards[case]
    counts = [vl_image_token_count(*image.size) for image in images]
    assert forward.image_token_counts == counts
    # One span per image, in order: <|vision_start|>, that image's pads, <|vision_end|>.
    assert spans(forward.input_ids) == [[VISION_START_ID, *[IMAGE_PAD_ID] * n, VISION_END_ID] for n in counts]
    rows = {mode: int(token_mode_rows(forward, mode).sum()) for mode in VL_TOKEN_MODES}
    assert rows["image_no_markers"] == sum(forward.image_token_counts) == sum(counts)
    assert rows["image_only"] == sum(counts) + 2 * len(images)
    assert rows["text_only"] + rows["image_only"] == rows["full"] == forward.length


LAYERS = [0, 1, -2, -1, NUM_LAYERS, -(NUM_LAYERS + 1)]


@pytest.mark.parametrize("case", ["red+noise", "noise+red/system"])
def test_select_is_the_layer_rows_of_the_mode(encoder, forwards, case):
    forward = forwards[case]
    for layer in LAYERS:
        for mode in VL_TOKEN_MODES:
            mask = torch.tensor(hand_rows(forward.input_ids, mode))
            got = encoder.select(forward, layer, mode)
            assert_bit_equal(got, forward.hidden_states[layer][mask])
            assert got.shape == (int(mask.sum()), HIDDEN)
    assert_bit_equal(encoder.select(forward), forward.hidden_states[-2])  # defaults: layer -2, full


def test_encode_is_select_of_forward(encoder, forwards):
    got = encoder.encode([RED, NOISE], "a cat on a mat", layer=-3, token_mode="image_no_markers")
    assert_bit_equal(got, encoder.select(forwards["red+noise"], -3, "image_no_markers"))
    got = encoder.encode([NOISE, RED], "two pictures", layer=5, token_mode="text_only", system_prompt=SYSTEM)
    assert_bit_equal(got, encoder.select(forwards["noise+red/system"], 5, "text_only"))


def test_image_paths_read_as_images(encoder, forwards, tmp_path):
    path = tmp_path / "noise.png"
    NOISE.save(path)  # PNG is lossless: the same pixels
    forward = encoder.forward([RED, path], "a cat on a mat")
    assert forward.input_ids == forwards["red+noise"].input_ids
    assert_bit_equal(forward.hidden_states[-1], forwards["red+noise"].hidden_states[-1])
    with pytest.raises(LlmDitError, match=r"missing\.png does not exist"):
        encoder.forward([tmp_path / "missing.png"], "a cat")


@pytest.mark.parametrize("layer", [NUM_LAYERS + 1, -(NUM_LAYERS + 2)])
def test_layer_out_of_range_is_refused(encoder, forwards, layer):
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        encoder.select(forwards["red"], layer, "full")
    with pytest.raises(LlmDitError, match=r"-37\.\.36"):
        encoder.encode([RED], "a cat", layer=layer)


@pytest.mark.parametrize("mode", ["image_only", "image_no_markers"])
def test_image_modes_without_images_are_refused(encoder, forwards, mode):
    with pytest.raises(LlmDitError, match=rf"{mode}.*no rows.*vl_image"):
        encoder.select(forwards["no-image"], -2, mode)
    with pytest.raises(LlmDitError, match="no rows"):
        encoder.encode([], "a cat", token_mode=mode)
    assert encoder.select(forwards["no-image"], -2, "text_only").shape == (forwards["no-image"].length, HIDDEN)


def test_unknown_token_mode_is_refused(encoder, forwards):
    needle = r"unknown vl_token_mode 'images'.*full, text_only, image_only, image_no_markers"
    with pytest.raises(LlmDitError, match=needle):
        token_mode_rows(forwards["red"], "images")
    with pytest.raises(LlmDitError, match=needle):
        encoder.select(forwards["red"], -2, "images")
    with pytest.raises(LlmDitError, match=needle):
        encoder.encode([RED], "a cat", token_mode="images")


# -- DeepStack ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["red", "noise+red/system"])
def test_deepstack_taps_come_after_the_captured_states(forwards, reference, case):
    """Text layers 0, 1, 2 each get one DeepStack tap added to their output's image rows before the next layer
    reads it; hidden_states[1..3] are the outputs before that addition, and text rows never get a tap."""
    model, processor = reference
    images, text, system = CASES[case]
    forward = forwards[case]
    inputs = processor(text=[expected_text(len(images), text, system)], images=images, return_tensors="pt")
    layer_inputs = {}

    def keep_input(k):
        return lambda module, args: layer_inputs.__setitem__(k, args[0][0])  # decoder layers take hidden_states first

    layers = model.model.language_model.layers
    hooks = [layers[k].register_forward_pre_hook(keep_input(k)) for k in (1, 2, 3, 4)]
    try:
        with torch.no_grad():
            model(**inputs)
            taps = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).deepstack_features
    finally:
        for hook in hooks:
            hook.remove()
    pads = torch.tensor(forward.input_ids) == IMAGE_PAD_ID
    assert len(taps) == 3
    for k in (1, 2, 3):
        tap = torch.cat(taps[k - 1])
        assert tap.shape == (int(pads.sum()), HIDDEN)
        assert bool(tap.abs().amax(dim=-1).gt(0).all())  # every image row gets a tap
        assert_bit_equal(layer_inputs[k][~pads], forward.hidden_states[k][~pads])
        assert_bit_equal(layer_inputs[k][pads], forward.hidden_states[k][pads] + tap)
    assert_bit_equal(layer_inputs[4], forward.hidden_states[4])  # no tap after layer 3


# -- captions -----------------------------------------------------------------------------------------------------

CAPTION_TOKENS = 8


def test_caption_is_seeded_and_keeps_the_global_rng(encoder):
    with torch.random.fork_rng():
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        first = encoder.caption(RED, seed=5, max_new_tokens=CAPTION_TOKENS)
        assert torch.equal(torch.get_rng_state(), before)
        second = encoder.caption(RED, seed=5, max_new_tokens=CAPTION_TOKENS)
        assert torch.equal(torch.get_rng_state(), before)
    assert isinstance(first, str)
    assert first == second
    with pytest.raises(LlmDitError, match="max_new_tokens must be >= 1"):
        encoder.caption(RED, max_new_tokens=0)


@pytest.mark.parametrize(("image", "seed"), [pytest.param(RED, 5, id="red-5"), pytest.param(NOISE, 11, id="noise-11")])
def test_caption_equals_seeded_generate(encoder, reference, image, seed):
    model, processor = reference
    # The checkpoint's sampling settings (Qwen3-VL-4B-Instruct's generation_config.json) drive both runs.
    config = model.generation_config
    assert (config.do_sample, config.temperature, config.top_p, config.top_k) == (True, 0.7, 0.8, 20)
    inputs = processor(text=[expected_text(1, DEFAULT_CAPTION_PROMPT)], images=[image], return_tensors="pt")
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        out = model.generate(**inputs, max_new_tokens=CAPTION_TOKENS, do_sample=True)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    expected = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert encoder.caption(image, seed=seed, max_new_tokens=CAPTION_TOKENS) == expected


# -- the checkpoint folder ------------------------------------------------------------------------------------


def _boom(*args, **kwargs):
    raise AssertionError("model weights were loaded")


@pytest.fixture
def no_vl_weights(monkeypatch):
    """Loading the VL model's weights fails the test."""
    monkeypatch.setattr(vl, "load_vl", _boom)
    monkeypatch.setattr(Qwen3VLForConditionalGeneration, "from_pretrained", _boom)


def _copy_without_weights(dest):
    dest.mkdir()
    for item in tiny_vl_path().iterdir():
        if item.suffix != ".safetensors":
            shutil.copy(item, dest / item.name)
    return dest


def _missing(tmp_path):
    return tmp_path / "nowhere"


def _a_file(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    return path


def _no_config(tmp_path):
    folder = _copy_without_weights(tmp_path / "vl")
    (folder / "config.json").unlink()
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _text_model(tmp_path):
    folder = _copy_without_weights(tmp_path / "vl")
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "num_hidden_layers": 36}))
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def _no_weights(tmp_path):
    return _copy_without_weights(tmp_path / "vl")


def _no_tokenizer(tmp_path):
    folder = _copy_without_weights(tmp_path / "vl")
    (folder / "tokenizer.json").unlink()
    (folder / "model.safetensors").write_bytes(b"")
    return folder


BAD_FOLDERS = {
    "missing": (_missing, "does not exist"),
    "file": (_a_file, "is not a directory"),
    "no-config": (_no_config, "no config.json"),
    "text-model": (_text_model, "model_type is 'qwen3', not 'qwen3_vl'"),
    "no-weights": (_no_weights, "no weight files"),
    "no-tokenizer": (_no_tokenizer, "no tokenizer.json"),
}


@pytest.mark.usefixtures("no_vl_weights")
@pytest.mark.parametrize("case", BAD_FOLDERS)
def test_bad_folder_is_refused_before_weights_load(tmp_path, case):
    make, needle = BAD_FOLDERS[case]
    with pytest.raises(CheckpointError, match=needle):
        VLEncoder.from_pretrained(make(tmp_path), device="cpu", torch_dtype="fp32")


@pytest.mark.usefixtures("no_vl_weights")
def test_from_pretrained_reads_json_only(tmp_path):
    folder = _copy_without_weights(tmp_path / "vl")
    (folder / "model.safetensors").write_bytes(b"not weights")  # validation never opens it
    encoder = VLEncoder.from_pretrained(folder, device="cpu", torch_dtype="fp32")
    assert (encoder.num_layers, encoder.hidden_size, encoder.path) == (NUM_LAYERS, HIDDEN, folder)
    assert VLEncoder.from_pretrained("tiny", device="cpu", torch_dtype="fp32").path == tiny_vl_path()


# ------------------------------------------------------------------- the light prediction (no model) vs the forward


@pytest.mark.parametrize("case", list(CASES))
def test_the_light_chat_text_is_the_real_templates(encoder, case):
    images, text, system = CASES[case]
    assert vl.vl_chat_text(len(images), text, system) == encoder.format(len(images), text, system)
    assert vl.vl_chat_text(len(images), "", system) == encoder.format(len(images), "", system)


@pytest.mark.parametrize("case", IMAGE_CASES)
@pytest.mark.parametrize("mode", VL_TOKEN_MODES)
def test_predicted_rows_equal_the_forwards(forwards, tmp_path, case, mode):
    """The checks' row count (image headers, processor rule, light tokenizer) is the forward's, per token mode."""
    from llm_dit.conditioning.tokenization import PromptTokenizer
    from llm_dit.config import EncoderSettings
    from llm_dit.generation.checks import predicted_vl_rows
    from llm_dit.generation.request import GenerationRequest
    from llm_dit.models import checkpoint

    images, text, system = CASES[case]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        image.save(paths[-1])
    request = GenerationRequest.build(
        "the run's prompt", conditioning="vl", vl_image=paths, vl_text=text, vl_system_prompt=system, vl_token_mode=mode
    )
    info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(None))
    prompts = PromptTokenizer.for_checkpoint(info, EncoderSettings())
    forward = forwards[case]
    rows, image_tokens = predicted_vl_rows(request, prompts)
    assert rows == int(token_mode_rows(forward, mode).sum())
    assert image_tokens == sum(forward.image_token_counts)
    mixed = GenerationRequest.build("p", conditioning="vl", vl_image=paths, vl_alpha=0.5, vl_token_mode=mode)
    assert predicted_vl_rows(mixed, prompts) is None  # a mix has the text's length

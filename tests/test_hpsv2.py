"""HPSv2.1 (llm_dit.metrics.hpsv2 and HpsV2Scorer) against open_clip's own code, on tiny random twins.

open_clip (3.3.0, a test-only reference installed with --no-deps, like lpips and torch-fidelity) builds the tiny
twins and computes the reference features. It imports torchvision (whose only wheel for torch 2.13 is a CUDA build
that cannot import next to the CPU torch) and ftfy at import time, so it is imported against stand-ins (see
``open_clip_package``) and forgotten by sys.modules again before any of our code runs. What the stand-ins leave
out, and how it is covered instead: torchvision's transforms (HPSv2's ``preprocess_val`` is transcribed from the
torchvision tensor code it runs, and torch's antialiased bicubic is checked against PIL's bicubic), and ftfy's
repairs (our port does not apply them: the tokenizer comparison uses texts ftfy leaves as they are).

A random twin checks the conversion and the formula; it says nothing about human preference.
"""

from __future__ import annotations

import copy
import enum
import gzip
import html
import importlib.util
import math
import shutil
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from bounds import EPS32, EPS64, probable, transformer_length, worst_case
from llm_dit.errors import LlmDitError
from llm_dit.metrics import hpsv2
from llm_dit.metrics.scorers import HpsV2Scorer, text_inputs
from tiny_scorers import build_tiny_clip

# The twin: ViT-H-14's layout (open_clip CLIP: ViT image tower, causal text tower) at toy sizes. The head widths are
# ViT-H-14's (80 for the image tower, 64 for text), so the widths are multiples of them.
VISION_CFG: dict[str, Any] = {"layers": 2, "width": 160, "head_width": 80, "patch_size": 14, "image_size": 56}
TEXT_CFG: dict[str, Any] = {"context_length": 77, "width": 128, "heads": 2, "layers": 2}
EMBED_DIM = 32
SIZE = VISION_CFG["image_size"]
PROMPTS = [
    "A photo of a cat",
    "a red dog on the grass",
    "The   blue car, parked in a city street at night!",
    "rock &amp; roll &amp;amp; more",  # HTML entities: open_clip unescapes twice
    "A very detailed photo of a red cat sitting on the blue sofa in the living room. " * 6,  # past 77 tokens
    "two birds",
]
# (width, height): equal to the tower's size, downscaled, non-square (padded), upscaled with an odd padding.
SIZES = [(56, 56), (200, 200), (90, 60), (70, 45), (33, 50), (20, 26)]
_REFERENCE_PACKAGES = ("open_clip", "torchvision", "ftfy")


def _is_reference(module: str) -> bool:
    return module.split(".", 1)[0] in _REFERENCE_PACKAGES


def _standins() -> dict[str, types.ModuleType]:
    """Stand-ins for what open_clip imports from torchvision and ftfy: just the names its import needs.

    The torchvision classes raise if anything builds one (no transform of open_clip's runs here). ftfy's
    ``fix_text`` returns its text unchanged: open_clip's tokenizer calls it, and the texts it gets here are ones
    ftfy would leave as they are.
    """

    def unusable(name: str) -> type:
        def refuse(self: Any, *args: Any, **kwargs: Any) -> None:
            raise AssertionError(f"the stand-in torchvision {name} was used")

        return type(name, (), {"__init__": refuse})

    class InterpolationMode(enum.Enum):
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    torchvision = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")
    for name in ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter"):
        setattr(transforms, name, unusable(name))
    transforms.Grayscale = unusable("Grayscale")  # type: ignore[attr-defined]
    transforms.InterpolationMode = InterpolationMode  # type: ignore[attr-defined]
    transforms.functional = functional  # type: ignore[attr-defined]
    misc.FrozenBatchNorm2d = unusable("FrozenBatchNorm2d")  # type: ignore[attr-defined]
    ops.misc = misc  # type: ignore[attr-defined]
    torchvision.transforms = transforms  # type: ignore[attr-defined]
    torchvision.ops = ops  # type: ignore[attr-defined]
    ftfy = types.ModuleType("ftfy")
    ftfy.fix_text = lambda text: text  # type: ignore[attr-defined]
    modules = (torchvision, transforms, functional, ops, misc, ftfy)
    return {module.__name__: module for module in modules}


@pytest.fixture(scope="module")
def open_clip_package() -> types.ModuleType:
    """The real open_clip package, imported against the stand-ins and then dropped from sys.modules (with the
    stand-ins), so that nothing else in the session sees either; the module objects keep working."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open_clip is not installed (pip install --no-deps open_clip_torch==3.3.0)")
    # transformers caches whether torchvision is installed the first time it asks: it asks now, while it is not,
    # so that importing open_clip (which imports transformers) cannot take the stand-in for the real package.
    transformers.utils.import_utils.is_torchvision_available()
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in sys.modules if _is_reference(n)]:
            mp.delitem(sys.modules, name)
        for name, module in _standins().items():
            mp.setitem(sys.modules, name, module)
        before = set(sys.modules)
        try:
            import open_clip
        finally:
            for name in set(sys.modules) - before:
                if _is_reference(name):
                    del sys.modules[name]
    assert not [name for name in sys.modules if _is_reference(name)]
    return open_clip


def _open_clip_model(open_clip: Any, vocab: int, seed: int, cls: str = "CLIP", **changes: dict[str, Any]) -> Any:
    """A tiny open_clip model built by open_clip's own class, random (seeded): open_clip's initialisation plus
    noise on every parameter, so that no LayerNorm is the identity and no bias is zero (a swapped norm or bias
    shows). ``changes``: entries merged into ``vision_cfg`` / ``text_cfg``."""
    vision = {**VISION_CFG, **changes.get("vision", {})}
    text = {**TEXT_CFG, "vocab_size": vocab, **changes.get("text", {})}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(open_clip, cls)(EMBED_DIM, vision, text)
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter), alpha=0.05)
    return model.eval()


def _save(path: Path, payload: Any) -> Path:
    torch.save(payload, path)
    return path


def _hps_dir(directory: Path, state: Any, processor_files: Path) -> Path:
    """A directory as the user sets up: the checkpoint file and the processor files of a CLIP directory."""
    directory.mkdir(parents=True)
    for file in processor_files.iterdir():
        if file.name not in ("config.json", "model.safetensors"):
            shutil.copy(file, directory / file.name)
    _save(directory / hpsv2.CHECKPOINT_NAME, state)
    return directory


@pytest.fixture(scope="module")
def twin(open_clip_package: Any, tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """The tiny twin: its open_clip model, its HPSv2 directory (``{"state_dict": ...}`` + the tiny CLIP
    tokenizer and processor files of tests/tiny_scorers.py), that tokenizer, and the CLIP directory."""
    root = tmp_path_factory.mktemp("hpsv2")
    clip_dir = build_tiny_clip(root / "clip")
    tokenizer = transformers.AutoTokenizer.from_pretrained(clip_dir)
    model = _open_clip_model(open_clip_package, len(tokenizer), seed=3)
    directory = _hps_dir(root / "hps", {"state_dict": model.state_dict()}, clip_dir)
    return types.SimpleNamespace(model=model, dir=directory, tokenizer=tokenizer, clip_dir=clip_dir, root=root)


def _image(seed: int, width: int, height: int, mode: str = "RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).convert(mode)


def _images() -> list[Image.Image]:
    images = [_image(10 + i, w, h) for i, (w, h) in enumerate(SIZES)]
    images[3] = images[3].convert("L")  # converted to RGB first, as HPSv2's _convert_to_rgb_or_rgba does
    return images


def _preprocess_val(image: Image.Image, size: int) -> torch.Tensor:
    """HPSv2's ``preprocess_val``, transcribed operation by operation from hpsv2 1.2.0's
    src/open_clip/transform.py (``image_transform(..., is_train=False, resize_longest_max=True)``, which
    img_score.py gets through ``light_augmentation=True``) and the torchvision tensor code it calls:

    - ``_convert_to_rgb_or_rgba``: ``image.convert("RGB")`` (it keeps RGBA, which the 3-channel model rejects).
    - ``ToTensor`` (``F.to_tensor``): ``torch.from_numpy(np.array(pic, np.uint8, copy=True))``, ``view(h, w, c)``,
      ``permute((2, 0, 1)).contiguous()``, ``to(float32).div(255)``.
    - ``ResizeMaxSize(size)``: ``height, width = img.shape[1:]``; ``scale = size / float(max(height, width))``;
      if ``scale != 1.0``: ``new_size = tuple(round(dim * scale) for dim in (height, width))``,
      ``F.resize(img, new_size, BICUBIC)`` (tensor: ``interpolate(mode="bicubic", align_corners=False,
      antialias=True)`` on the unsqueezed image, torchvision >= 0.17's default), then ``F.pad(img, [pad_w // 2,
      pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)`` (torch pad, order left, right, top, bottom).
    - ``Normalize`` (``F_t.normalize``): float32 mean and std ``[:, None, None]``, ``tensor.sub_(mean).div_(std)``.
    """
    pic = image.convert("RGB") if image.mode != "RGB" else image
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True)).view(pic.size[1], pic.size[0], 3)
    img = img.permute((2, 0, 1)).contiguous().to(dtype=torch.float32).div(255)
    height, width = img.shape[1:]
    scale = size / float(max(height, width))
    if scale != 1.0:
        new_size = tuple(round(dim * scale) for dim in (height, width))
        img = torch.nn.functional.interpolate(
            img.unsqueeze(0), size=list(new_size), mode="bicubic", align_corners=False, antialias=True
        ).squeeze(0)
        pad_h, pad_w = size - new_size[0], size - new_size[1]
        left, top, right, bottom = pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2
        img = torch.nn.functional.pad(img.unsqueeze(0), [left, right, top, bottom], mode="constant", value=0.0)
        img = img.squeeze(0)
    mean = torch.as_tensor(hpsv2.OPENAI_MEAN, dtype=torch.float32)[:, None, None]
    std = torch.as_tensor(hpsv2.OPENAI_STD, dtype=torch.float32)[:, None, None]
    return img.clone().sub_(mean).div_(std)


def _open_clip_tokens(tokenizer: Any, texts: list[str], context: int = 77) -> torch.Tensor:
    """open_clip's ``tokenize`` with the twin's BPE: ``[sot] + encode(whitespace_clean(basic_clean(text)).lower())
    + [eot]`` (basic_clean: ftfy, then ``html.unescape`` twice, strip), truncated to ``context`` with the last token
    set to eot, zero-padded to ``context``."""
    result = torch.zeros(len(texts), context, dtype=torch.long)
    for row, text in enumerate(texts):
        clean = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
        tokens = [tokenizer.bos_token_id, *tokenizer.encode(clean, add_special_tokens=False), tokenizer.eos_token_id]
        if len(tokens) > context:
            tokens = tokens[:context]
            tokens[-1] = tokenizer.eos_token_id
        result[row, : len(tokens)] = torch.tensor(tokens)
    return result


# -- bounds --------------------------------------------------------------------------------------------------------


def _tower_lengths(config: Any) -> tuple[int, int]:
    """Summed reduction lengths (bounds.transformer_length) of the image tower (patch projection, the transformer
    on the class token + patches, the projection counted as one more layer) and of the text tower (77 tokens)."""
    vision, text = config.vision_config, config.text_config
    tokens = (vision.image_size // vision.patch_size) ** 2 + 1
    image = vision.num_channels * vision.patch_size**2 + transformer_length(vision, tokens, extra_layers=1)
    return image, transformer_length(text, text.max_position_embeddings, extra_layers=1)


def _unit_bound(length: int, error: Callable[[int], float]) -> float:
    """Bound on a component of the difference of two unit-normalised embeddings computed by two implementations.

    Each implementation's embedding v carries a relative (2-norm) error of at most error(length) (the rounding
    model of bounds.py), so the two differ by at most 2 error(length) |v|; normalising maps a relative
    difference d to at most 2 d between the unit vectors (|a/|a| - b/|b|| <= 2 |a - b| / |a|). A component is at
    most the 2-norm: 4 error(length).
    """
    return 4 * error(length)


def _cosine_bound(image_length: int, text_length: int, error: Callable[[int], float], eps: float) -> float:
    """Bound on |cos_ours - cos_reference| for one pair: each side's unit vectors are within 2 error(n) of the
    exact ones (see _unit_bound), so each cosine is within 2 error(image) + 2 error(text) plus the rounding of its
    own EMBED_DIM-term dot product; two evaluations: twice that."""
    return 2 * (2 * error(image_length) + 2 * error(text_length) + worst_case(EMBED_DIM, eps))


def _float64(length: int) -> float:
    return worst_case(length, EPS64)


# -- the conversion against open_clip's features ----------------------------------------------------------------


@pytest.mark.numerics
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_converted_model_gives_open_clips_features(twin: types.SimpleNamespace, dtype: torch.dtype) -> None:
    scorer = HpsV2Scorer.from_pretrained(twin.dir, device="cpu", dtype="float32")
    config = scorer.model.config
    # Every size comes from the state dict; heads from ViT-H-14's head widths.
    assert (config.vision_config.hidden_size, config.vision_config.num_hidden_layers) == (160, 2)
    assert (config.vision_config.num_attention_heads, config.text_config.num_attention_heads) == (2, 2)
    assert (config.vision_config.image_size, config.vision_config.patch_size, config.projection_dim) == (56, 14, 32)
    assert (config.text_config.hidden_act, config.vision_config.hidden_act) == ("gelu", "gelu")
    ours, reference = copy.deepcopy(scorer.model).to(dtype), copy.deepcopy(twin.model).to(dtype)
    pixels = torch.stack([_preprocess_val(image, SIZE) for image in _images()]).to(dtype)
    # Ours: padded to the longest text with the attention mask, pooled at the first eot. open_clip's: zero-padded
    # to 77, pooled at argmax(ids), its eot (the largest id).
    inputs = scorer._text_inputs(PROMPTS)
    ids = _open_clip_tokens(twin.tokenizer, PROMPTS)
    with torch.inference_mode():
        got_image = torch.nn.functional.normalize(ours.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        got_text = torch.nn.functional.normalize(ours.get_text_features(**inputs).pooler_output, dim=-1)
        want_image = reference.encode_image(pixels, normalize=True)
        want_text = reference.encode_text(ids, normalize=True)
    # The same tokens up to each text's eot (the long prompt cut at 77 with its eot kept), then only padding.
    assert inputs["input_ids"].shape[1] == 77
    for row, length in enumerate(inputs["attention_mask"].sum(dim=1).tolist()):
        assert torch.equal(inputs["input_ids"][row, :length], ids[row, :length]) and not ids[row, length:].any()
    image_length, text_length = _tower_lengths(config)
    error = _float64 if dtype == torch.float64 else probable
    image_error = float((got_image - want_image).abs().max())
    text_error = float((got_text - want_text).abs().max())
    assert image_error <= _unit_bound(image_length, error), (image_error, _unit_bound(image_length, error))
    assert text_error <= _unit_bound(text_length, error), (text_error, _unit_bound(text_length, error))
    # Non-trivial: the features of different inputs are far apart, far beyond the bound.
    assert float((want_image[0] - want_image[1]).abs().max()) > 100 * _unit_bound(image_length, error)
    assert float((want_text[0] - want_text[1]).abs().max()) > 100 * _unit_bound(text_length, error)


@pytest.mark.numerics
def test_scores_are_hpsv2s_formula_on_open_clips_features(twin: types.SimpleNamespace) -> None:
    """hpsv2/img_score.py: preprocess_val per image, open_clip's tokens, features normalised, then the diagonal of
    image_features @ text_features.T (no logit scale), on open_clip's model; ours in batches of 2 pairs."""
    images = _images()
    with HpsV2Scorer.from_pretrained(twin.dir, device="cpu", dtype="float32", batch_size=2) as scorer:
        got = scorer.score(images, PROMPTS)
        image_length, text_length = _tower_lengths(scorer.model.config)
    pixels = torch.stack([_preprocess_val(image, SIZE) for image in images])
    with torch.inference_mode():
        image_features = twin.model.encode_image(pixels, normalize=True)
        text_features = twin.model.encode_text(_open_clip_tokens(twin.tokenizer, PROMPTS), normalize=True)
        want = torch.diagonal(image_features @ text_features.T).tolist()
    bound = _cosine_bound(image_length, text_length, probable, EPS32)
    for value, expected in zip(got, want, strict=True):
        assert abs(value - expected) <= bound, (got, want, bound)
    # Non-trivial: distinct scores (a scorer that paired the wrong image and text would be off by more than the
    # bound), and the model's logit scale is not 1, so a scaled cosine would be off too.
    assert min(abs(a - b) for i, a in enumerate(want) for b in want[i + 1 :]) > 10 * bound, want
    assert abs(float(twin.model.logit_scale.detach().exp()) - 1.0) > 1.0


# -- preprocessing ----------------------------------------------------------------------------------------------


def test_pixels_are_hpsv2s_preprocess_val() -> None:
    images = _images()
    got = hpsv2.pixel_values(images, SIZE)
    want = torch.stack([_preprocess_val(image, SIZE) for image in images])
    assert got.shape == (len(images), 3, SIZE, SIZE) and got.dtype == torch.float32
    assert torch.equal(got, want)  # the same torch operations on the same tensors
    # The padding is black, (0 - mean) / std: above and below a wide image (90x60 -> 56x37: 19 rows, 9 + 10).
    black = torch.tensor(hpsv2.OPENAI_MEAN).neg().div(torch.tensor(hpsv2.OPENAI_STD)).view(3, 1, 1)
    wide = got[2]
    assert torch.equal(wide[:, :9], black.expand(3, 9, SIZE)) and torch.equal(wide[:, -10:], black.expand(3, 10, SIZE))
    assert not torch.equal(wide[:, 9:10], black.expand(3, 1, SIZE))
    # RGBA is converted to RGB (HPSv2 keeps the alpha channel, which its model cannot take).
    rgba = images[1].convert("RGBA")
    assert torch.equal(hpsv2.pixel_values([rgba], SIZE), got[1:2])
    # An image whose longest side is already the tower's is padded like any other (HPSv2 leaves it non-square).
    assert hpsv2.pixel_values([_image(1, 56, 40)], SIZE).shape == (1, 3, SIZE, SIZE)


_KEYS_A = -0.5  # the bicubic kernel of PIL and of torch's antialiased resize: Keys' cubic with a = -0.5
_KEYS_SLOPE = 25 / 18  # its largest |k'|, at |x| = 5/9
_KEYS_EVAL = 72  # rounding of one kernel value, in eps: Horner on a cubic, gamma_6 times sum |a_i| |x|^i <= 24


def _keys(x: float) -> float:
    x = abs(x)
    if x < 1:
        return ((_KEYS_A + 2) * x - (_KEYS_A + 3)) * x * x + 1
    if x < 2:
        return (((x - 5) * x + 8) * x - 4) * _KEYS_A
    return 0.0


def _taps(in_size: int, out_size: int) -> tuple[int, float, float]:
    """The filter of one axis as PIL computes it (libImaging/Resample.c, precompute_coeffs, in double): the most
    taps of an output sample, the least sum of the raw kernel values over them, the largest sum of |weights|."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    taps, least, l1 = 0, math.inf, 0.0
    for i in range(out_size):
        center = (i + 0.5) * scale
        low = max(int(center - 2 * stretch + 0.5), 0)
        high = min(int(center + 2 * stretch + 0.5), in_size)
        weights = [_keys((j - center + 0.5) / stretch) for j in range(low, high)]
        taps, least = max(taps, high - low), min(least, sum(weights))
        l1 = max(l1, sum(abs(w) for w in weights) / sum(weights))
    return taps, least, l1


def _resize_bound(in_size: tuple[int, int], out_size: tuple[int, int]) -> float:
    """Bound on |torch's antialiased bicubic resize - PIL's| of an image in [0, 1], after HPSv2's normalisation.

    Both resample each axis with the same normalised kernel taps w_j = k(t_j) / sum k, t_j = (j - c + 0.5) / s,
    c = (i + 0.5) * scale, s = max(scale, 1); PIL in double, storing each pass in float32 (eps/2 each), torch in
    float32. Per pass of K taps from an input of length L with values at most m: torch's t_j is off by at most
    eps (3 (L + 1) / s + 4) (c and the sum rounded at magnitude L, then scaled), so each k(t_j) by
    slope * that + 72 eps; the normalised weights by 2 K dk / min sum k + 2 K eps in sum; the sum of K products
    rounds within K eps l1 m. The first pass's error is carried through the second's weights (l1 times), and the
    second's input is at most l1. Normalising divides by std (>= 0.26) and rounds within 2 eps (m + 1) / std.
    """
    total, m = 0.0, 1.0
    for length, out in zip(in_size, out_size, strict=True):
        taps, least, l1 = _taps(length, out)
        dt = EPS32 * (3 * (length + 1) / max(length / out, 1.0) + 4)
        dk = _KEYS_SLOPE * dt + _KEYS_EVAL * EPS32
        weights = 2 * taps * dk / least + 2 * taps * EPS32
        total = total * l1 + m * (weights + taps * EPS32 * l1) + EPS32 * m * l1
        m *= l1
    std = min(hpsv2.OPENAI_STD)
    return total / std + 2 * EPS32 * (m + 1) / std


def _pil_reference(image: Image.Image, size: int) -> np.ndarray:
    """HPSv2's preprocess_val with PIL's bicubic resampling of the float image (mode "F", per channel) instead of
    torch's, padding and normalisation in float64."""
    x = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255)
    height, width = x.shape[:2]
    scale = size / float(max(height, width))
    new_h, new_w = round(height * scale), round(width * scale)
    channels = [
        np.asarray(Image.fromarray(np.ascontiguousarray(x[:, :, c])).resize((new_w, new_h), Image.Resampling.BICUBIC))
        for c in range(3)
    ]
    resized = np.stack(channels).astype(np.float64)
    pad_h, pad_w = size - new_h, size - new_w
    padded = np.pad(resized, ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)))
    mean, std = np.array(hpsv2.OPENAI_MEAN)[:, None, None], np.array(hpsv2.OPENAI_STD)[:, None, None]
    return (padded - mean) / std


@pytest.mark.numerics
def test_resize_is_pils_bicubic() -> None:
    """torchvision's tensor resize (what HPSv2 runs: torch's antialiased bicubic) against PIL's bicubic resampler,
    an independent implementation of the same filter, within the rounding of both."""
    for index, (width, height) in enumerate(SIZES[1:]):
        image = _image(20 + index, width, height)
        scale = SIZE / max(width, height)
        new_size = (round(height * scale), round(width * scale))
        got = hpsv2.pixel_values([image], SIZE)[0].double().numpy()
        bound = _resize_bound((height, width), new_size)
        error = float(np.abs(got - _pil_reference(image, SIZE)).max())
        assert error <= bound, ((width, height), error, bound)
    # The bound tells filters apart: without antialiasing (torchvision < 0.17's tensor default) the 200 px image
    # is off by far more.
    image = _image(20, *SIZES[1])
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    aliased = torch.nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bicubic", align_corners=False)[0]
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (hpsv2.OPENAI_MEAN, hpsv2.OPENAI_STD))
    aliased_error = float(np.abs(((aliased - mean) / std).double().numpy() - _pil_reference(image, SIZE)).max())
    assert aliased_error > 100 * _resize_bound((200, 200), (SIZE, SIZE)), aliased_error


# -- text --------------------------------------------------------------------------------------------------------


def _full_clip_tokenizer(open_clip: Any, directory: Path) -> Any:
    """transformers' CLIPTokenizer on open_clip's own vocabulary (its packaged bpe_simple_vocab_16e6.txt.gz, the
    vocabulary of every OpenAI/OpenCLIP CLIP, CLIP-H's included), built as open_clip's SimpleTokenizer builds it,
    saved to ``directory`` and loaded back as the scorer loads one."""
    module = open_clip.tokenizer  # through the fixture's module objects: open_clip is not in sys.modules
    with gzip.open(module.default_bpe()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    alphabet = list(module.bytes_to_unicode().values())
    vocab = [*alphabet, *(c + "</w>" for c in alphabet), *("".join(m) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(vocab)}, merges=merges)
    tokenizer.save_pretrained(directory)
    return transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)


def test_tokenization_matches_open_clips_tokenizer(open_clip_package: Any, tmp_path: Path) -> None:
    """On the real CLIP vocabulary: the scorer's text handling (clean_text, then the CLIP tokenizer padded to the
    longest text) gives open_clip's tokens up to each text's eot, where both towers pool."""
    texts = [
        *PROMPTS,
        "A PHOTO of a Dog's   toy; it isn't red, it'll be blue (3.5 m away) -- 100% !!",
        "\ttabs\nand newlines  ",
        "&lt;3 &quot;quoted&quot; &amp;quot;twice&amp;quot;",
        "café naïve Zürich façade, 東京タワー, emoji 🐱🐶",
        "numbers 2024 and 3.14159 and 1,000,000",
    ]
    tokenizer = _full_clip_tokenizer(open_clip_package, tmp_path)
    ids = open_clip_package.tokenizer.SimpleTokenizer()(texts)  # [n, 77], zero-padded
    ours = text_inputs(tokenizer, [hpsv2.clean_text(text) for text in texts], "clip", max_length=77)
    for row, text in enumerate(texts):
        length = int(ours["attention_mask"][row].sum())
        assert ours["input_ids"][row, :length].tolist() == ids[row, :length].tolist(), text
        assert not ids[row, length:].any(), text
        # Where they pool: open_clip at argmax(ids), transformers at the first eos.
        first_eos = int((ours["input_ids"][row] == tokenizer.eos_token_id).int().argmax())
        assert first_eos == int(ids[row].argmax()) == length - 1, text
    assert int(ours["attention_mask"][4].sum()) == 77  # the long prompt, truncated with its eot kept


# -- refusals ----------------------------------------------------------------------------------------------------


def _error(path: Path, *names: str) -> str:
    with pytest.raises(LlmDitError) as excinfo:
        HpsV2Scorer.from_pretrained(path, device="cpu")
    message = str(excinfo.value)
    assert "\n" not in message
    assert "set [default.metrics] hpsv2_path to a directory with HPS_v2.1_compressed.pt" in message
    for name in names:
        assert name in message, message
    return message


@pytest.fixture
def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load the tokenizer or the weights fails the test: these errors must come first."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("tried to load before the directory was checked")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(torch, "load", refuse)


def _damaged(twin: types.SimpleNamespace, name: str, payload: Any = None, data: bytes | None = None) -> Path:
    """A copy of the twin's directory whose checkpoint file holds ``payload`` (torch.save) or the bytes ``data``."""
    directory = _hps_dir(twin.root / "damaged" / name, {}, twin.clip_dir)
    file = directory / hpsv2.CHECKPOINT_NAME
    if data is not None:
        file.write_bytes(data)
    else:
        _save(file, payload)
    return directory


@pytest.mark.usefixtures("no_loading")
def test_directory_refusals_come_before_loading(twin: types.SimpleNamespace, tmp_path: Path) -> None:
    assert "HPSv2.1 directory does not exist" in _error(tmp_path / "nowhere", str(tmp_path / "nowhere"))
    file = _save(tmp_path / "weights.pt", {})
    assert "not a directory" in _error(file, str(file))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no HPS_v2.1_compressed.pt;" in _error(empty)
    _save(empty / "HPS_v2_compressed.pt", {})
    assert "HPS_v2_compressed.pt is there: that is HPSv2.0" in _error(empty)
    no_tokenizer = tmp_path / "no_tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(twin.dir / hpsv2.CHECKPOINT_NAME, no_tokenizer)
    assert "incomplete HPSv2.1 directory: no tokenizer files (tokenizer.json or" in _error(no_tokenizer)
    for name, data, what in (
        ("zero", b"", "empty"),
        (
            "lfs",
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n",
            "a Git LFS pointer, not the weights",
        ),
        ("text", b"<html>not found</html>", "not a torch.save file"),
    ):
        file = _damaged(twin, name, data=data) / hpsv2.CHECKPOINT_NAME
        assert f"{file}: {what};" in _error(file.parent)


def test_unreadable_files_and_missing_state_dicts(twin: types.SimpleNamespace) -> None:
    data = (twin.dir / hpsv2.CHECKPOINT_NAME).read_bytes()
    for name, kwargs, what in (
        ("truncated", {"data": data[:4096]}, "cannot read it with torch.load(weights_only=True): "),
        ("objects", {"payload": {"state_dict": {}, "path": Path("x")}}, "cannot read it with torch.load(weights_only"),
        ("no_state_dict", {"payload": {"epoch": 3, "optimizer": {}}}, "holds no state dict (expected {'state_dict'"),
        ("a_list", {"payload": [torch.zeros(1)]}, "holds no state dict"),
        ("empty_state_dict", {"payload": {"state_dict": {}}}, "holds no state dict"),
    ):
        file = _damaged(twin, name, **kwargs) / hpsv2.CHECKPOINT_NAME
        assert f"{file}: {what}" in _error(file.parent)


def _state(twin: types.SimpleNamespace) -> dict[str, torch.Tensor]:
    return dict(twin.model.state_dict())


def test_missing_unexpected_and_misshapen_keys(twin: types.SimpleNamespace) -> None:
    missing = _state(twin)
    del missing["transformer.resblocks.1.mlp.c_proj.bias"]
    unexpected = {**_state(twin), "logit_bias": torch.zeros(1)}
    misshapen = {**_state(twin), "text_projection": torch.zeros(TEXT_CFG["width"], EMBED_DIM + 1)}
    prefixed = {f"module.{key}": value for key, value in _state(twin).items()}  # saved from DDP: accepted
    for name, state, what in (
        (
            "missing",
            missing,
            "not a complete open_clip CLIP state dict: missing transformer.resblocks.1.mlp.c_proj.bias",
        ),
        ("unexpected", unexpected, "not open_clip's plain CLIP layout: unexpected logit_bias; HPSv2.1 is an open_clip"),
        (
            "misshapen",
            misshapen,
            "shapes that do not fit one open_clip CLIP: text_projection (128, 33) (not (128, 32))",
        ),
        (
            "no_conv",
            {k: v for k, v in _state(twin).items() if k != "visual.conv1.weight"},
            "not an open_clip CLIP state dict: no key visual.conv1.weight",
        ),
    ):
        file = _damaged(twin, name, {"state_dict": state}) / hpsv2.CHECKPOINT_NAME
        assert f"{file}: {what}" in _error(file.parent)
    directory = _damaged(twin, "prefixed", {"state_dict": prefixed})
    with HpsV2Scorer.from_pretrained(directory, device="cpu") as scorer:
        assert scorer.model.config.text_config.num_hidden_layers == 2


def test_other_open_clip_layouts_are_refused(open_clip_package: Any, twin: types.SimpleNamespace) -> None:
    """Models open_clip builds that are not the plain CLIP of ViT-H-14, each named by what it has. (QuickGELU
    cannot be refused: its weights are a GELU model's.)"""
    vocab = len(twin.tokenizer)
    for name, model, what in (
        ("custom_text", _open_clip_model(open_clip_package, vocab, 1, "CustomTextCLIP"), "a custom text tower"),
        (
            "attn_pool",
            _open_clip_model(open_clip_package, vocab, 1, vision={"attentional_pool": True, "attn_pooler_heads": 2}),
            "an attentional pooler (key visual.attn_pool",
        ),
        ("layer_scale", _open_clip_model(open_clip_package, vocab, 1, vision={"ls_init_value": 0.1}), "layer scale"),
        (
            "heads",
            _open_clip_model(open_clip_package, vocab, 1, vision={"width": 96, "head_width": 48}),
            "vision width 96 is not a multiple of ViT-H-14's 80-wide attention heads",
        ),
        (
            "vocab",
            _open_clip_model(open_clip_package, vocab + 1, 1),
            f"the tokenizer has {vocab} tokens but the checkpoint's text tower {vocab + 1}",
        ),
    ):
        directory = _damaged(twin, name, {"state_dict": model.state_dict()})
        message = _error(directory, what)
        assert str(directory) in message


def test_registry_and_settings(twin: types.SimpleNamespace, tmp_path: Path) -> None:
    from llm_dit.config import MetricsSettings
    from llm_dit.metrics.registry import METRICS, select_metrics

    spec = METRICS["hpsv2"]
    assert (spec.kind, spec.setting, spec.higher_is_better, spec.default) == ("text_image", "hpsv2_path", True, True)
    assert "HPSv2.1" in spec.description and HpsV2Scorer.config_key == spec.setting == "hpsv2_path"
    chosen, _ = select_metrics(["hpsv2"], MetricsSettings(hpsv2_path=str(twin.dir)))
    assert chosen == [spec]
    with pytest.raises(LlmDitError, match=r"HPSv2\.1 directory does not exist; set \[default\.metrics\] hpsv2_path"):
        select_metrics(None, MetricsSettings(hpsv2_path=str(tmp_path / "nowhere")))
    assert MetricsSettings(hpsv2_path="").hpsv2_path is None  # "" unsets, as for the other paths

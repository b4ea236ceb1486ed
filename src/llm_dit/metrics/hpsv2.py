"""HPSv2.1 (Wu et al., 2023, "Human Preference Score v2") without open_clip: its open_clip ViT-H-14 state dict
mapped onto transformers' ``CLIPModel``, and HPSv2's own image and text preprocessing.

HPSv2.1 is an open_clip ``CLIP`` (ViT-H-14, the laion2B-s32B-b79K architecture) fine-tuned on human preferences;
``HPS_v2.1_compressed.pt`` holds ``{"state_dict": model.state_dict()}``. The score is what ``hpsv2/img_score.py``
(hpsv2 1.2.0) computes: ``diag(image_features @ text_features.T)`` of the L2-normalised features, i.e. the cosine of
each image with its prompt, with no logit scale. OpenCLIP's ViT-H-14 and transformers' CLIPModel are the same
network (transformers' ``convert_clip_original_pytorch_to_hf.py`` maps OpenAI-layout weights, which open_clip
keeps, the same way as :func:`hf_state_dict`): pre-norm residual blocks with exact GELU (open_clip's ViT-H-14 uses
``nn.GELU``; HPSv2 passes ``force_quick_gelu=False``), LayerNorm eps 1e-5, a class token pooled after ``ln_post``
and projected, a causal text tower pooled at the end-of-text token and projected.

Every size is derived from the state dict's shapes (layers counted from the keys), except what weights cannot
show: the number of attention heads, which follows open_clip's ``ViT-H-14.json`` (vision head width 80, i.e. 16
heads of 1280; text 16 heads of 1024, head width 64), and the activation (GELU, not QuickGELU: a QuickGELU model
has the same weights, so it cannot be refused from them). A file of another layout (a custom text tower, a timm or
ResNet image tower, an attentional pooler, layer scale, ...) is refused by its keys.

Image preprocessing is HPSv2's ``preprocess_val``, not open_clip's usual val transform: ``img_score.py`` calls
``create_model_and_transforms(..., light_augmentation=True)``, whose transform (hpsv2/src/open_clip/transform.py)
is ``_convert_to_rgb_or_rgba, ToTensor(), ResizeMaxSize(224), Normalize(OpenAI mean, std)``: the image becomes a
[0, 1] float tensor first, its LONGEST side is resized to 224 (bicubic, on the tensor: torchvision's tensor resize
is ``torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True)``, unclamped), and it is
padded with zeros (black) to 224 x 224, centred. :func:`pixel_values` does exactly these operations in torch. A
CLIPImageProcessor (shortest side to 224 with PIL on 8-bit pixels, centre crop) differs: rounded and clipped
pixels, and a crop instead of padding for non-square images.

Text: open_clip's tokenizer cleans with ``ftfy.fix_text``, ``html.unescape`` twice, collapses whitespace and
lower-cases, then CLIP's BPE with ``<start_of_text>``/``<end_of_text>`` (ids 49406/49407), truncated to 77 with the
end-of-text token kept, zero-padded to 77, and the tower pools at ``argmax(ids)``, the end-of-text token (the
largest id). :func:`clean_text` does the ``html.unescape`` step; transformers' CLIP tokenizer does the rest (NFC,
whitespace, lower-casing, the same BPE and split pattern) except ftfy's repairs (mojibake, curly quotes, ligatures,
full-width forms), which are not applied: ftfy is not a dependency. The scorer pads to the batch's longest text,
not to 77, and pools at the first end-of-text token: under the causal mask no position up to the end-of-text
token attends to anything after it, so the padding (and its value) cannot change the pooled features.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from llm_dit.errors import CheckpointError
from llm_dit.metrics.state_dicts import load_torch_file
from llm_dit.models.devices import quiet_hf

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "CHECKPOINT_NAME",
    "OpenClipLayout",
    "check_file",
    "check_tokenizer",
    "clean_text",
    "clip_config",
    "hf_state_dict",
    "layout_of",
    "load_model",
    "pixel_values",
    "read_state_dict",
]

CHECKPOINT_NAME = "HPS_v2.1_compressed.pt"
HPSV2_0_NAME = "HPS_v2_compressed.pt"  # HPSv2.0: the same layout, other weights; this metric is HPSv2.1
# open_clip's model_configs/ViT-H-14.json: vision width 1280 with head_width 80 (16 heads), text width 1024 with
# 16 heads (64 wide). Attention heads leave no trace in the weights' shapes.
VISION_HEAD_WIDTH = 80
TEXT_HEAD_WIDTH = 64
LAYER_NORM_EPS = 1e-5  # open_clip's LayerNorm is torch's nn.LayerNorm with its default eps
# open_clip.constants.OPENAI_DATASET_MEAN / _STD: HPSv2 passes image_mean=None, and open_clip's pretrained config of
# ViT-H-14 laion2b_s32b_b79k sets none, so these apply.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Keys of open_clip models that are not the plain CLIP of ViT-H-14, and what they mean (the first match is named).
_FOREIGN_PREFIXES = (
    ("text.", "a custom text tower (open_clip CustomTextCLIP, e.g. a Hugging Face text encoder)"),
    ("text_decoder.", "a CoCa text decoder"),
    ("visual.trunk.", "a timm image tower"),
    ("visual.attn_pool", "an attentional pooler"),
    ("visual.attnpool.", "a ResNet image tower"),
    ("visual.layer1.", "a ResNet image tower"),
    ("visual.patchnorm_pre_ln.", "input patch normalisation"),
)
_FOREIGN_PARTS = (
    (".ls_1.", "layer scale"),
    (".ls_2.", "layer scale"),
    (".ln_attn.", "custom residual blocks (scale_attn)"),
    (".attn.ln_inner.", "custom residual blocks (scale_attn_inner)"),
    (".mlp.ln.", "custom residual blocks (scale_fc)"),
    (".attn.q_norm.", "custom residual blocks (qk_norm)"),
    (".attn.head_scale", "custom residual blocks (scale_heads)"),
)
_LAYER = re.compile(r"^(visual\.transformer|transformer)\.resblocks\.(\d+)\.")
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80")  # a zip archive (torch.save since 1.6) or a pickle (the legacy format)


@dataclass(frozen=True)
class OpenClipLayout:
    """The sizes of an open_clip CLIP (ViT image tower, causal text tower), as read from its state dict."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    vision_mlp: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    text_mlp: int
    vocab_size: int
    context_length: int

    @property
    def vision_heads(self) -> int:
        return self.vision_width // VISION_HEAD_WIDTH

    @property
    def text_heads(self) -> int:
        return self.text_width // TEXT_HEAD_WIDTH

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every key of such a model's ``state_dict()`` and its shape."""
        w, t, e = self.vision_width, self.text_width, self.embed_dim
        grid = self.image_size // self.patch_size
        shapes: dict[str, tuple[int, ...]] = {
            "logit_scale": (),
            "positional_embedding": (self.context_length, t),
            "text_projection": (t, e),
            "token_embedding.weight": (self.vocab_size, t),
            "ln_final.weight": (t,),
            "ln_final.bias": (t,),
            "visual.class_embedding": (w,),
            "visual.positional_embedding": (grid * grid + 1, w),
            "visual.proj": (w, e),
            "visual.conv1.weight": (w, 3, self.patch_size, self.patch_size),
            "visual.ln_pre.weight": (w,),
            "visual.ln_pre.bias": (w,),
            "visual.ln_post.weight": (w,),
            "visual.ln_post.bias": (w,),
        }
        for prefix, width, layers, mlp in (
            ("visual.transformer", w, self.vision_layers, self.vision_mlp),
            ("transformer", t, self.text_layers, self.text_mlp),
        ):
            for i in range(layers):
                block = f"{prefix}.resblocks.{i}."
                shapes.update(
                    {
                        block + "ln_1.weight": (width,),
                        block + "ln_1.bias": (width,),
                        block + "attn.in_proj_weight": (3 * width, width),
                        block + "attn.in_proj_bias": (3 * width,),
                        block + "attn.out_proj.weight": (width, width),
                        block + "attn.out_proj.bias": (width,),
                        block + "ln_2.weight": (width,),
                        block + "ln_2.bias": (width,),
                        block + "mlp.c_fc.weight": (mlp, width),
                        block + "mlp.c_fc.bias": (mlp,),
                        block + "mlp.c_proj.weight": (width, mlp),
                        block + "mlp.c_proj.bias": (width,),
                    }
                )
        return shapes


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_file(file: Path, fix: str) -> None:
    """Cheap checks of the checkpoint file (present, non-empty, a torch.save archive by its first bytes); reads at
    most 16 bytes. Raises CheckpointError naming the file."""
    if not file.is_file():
        found = sorted(p.name for p in file.parent.glob("*.pt"))
        if HPSV2_0_NAME in found:
            hint = f" ({HPSV2_0_NAME} is there: that is HPSv2.0, this metric is HPSv2.1)"
        elif found:
            hint = f" (found {', '.join(found)})"
        else:
            hint = ""
        raise CheckpointError(f"{file.parent}: no {file.name}{hint}; {fix}")
    try:
        with file.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise CheckpointError(f"{file}: cannot read it ({exc.strerror or exc}); {fix}") from exc
    if not head.startswith(_TORCH_SAVE_MAGIC):
        what = "a Git LFS pointer, not the weights" if head.startswith(b"version ") else "not a torch.save file"
        raise CheckpointError(f"{file}: {'empty' if not head else what}; {fix}")


def read_state_dict(file: Path, fix: str) -> dict[str, torch.Tensor]:
    """The state dict in ``file`` (``{"state_dict": ...}`` as HPSv2 saves it, or a bare one), loaded with
    ``weights_only=True`` (memory-mapped where the format allows), a DDP ``module.`` prefix removed."""
    try:
        loaded = load_torch_file(file)
    except Exception as exc:  # any unpickling or archive error is one line
        raise CheckpointError(
            f"{file}: cannot read it with torch.load(weights_only=True): {_first_line(exc)}; {fix}"
        ) from exc
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else loaded
    if (
        not isinstance(state, Mapping)
        or not state
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    ):
        raise CheckpointError(
            f"{file}: holds no state dict (expected {{'state_dict': {{name: tensor}}}}, as HPSv2 saves it); {fix}"
        )
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return dict(state)


def _keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:3])
    return shown + (f" ({len(keys)} in all)" if len(keys) > 3 else "")


def layout_of(state: Mapping[str, torch.Tensor], file: Path, fix: str) -> OpenClipLayout:
    """The sizes of the open_clip CLIP whose state dict is ``state``; CheckpointError (one line naming ``file``)
    for any other layout, a missing or unexpected key, or a shape that does not fit."""
    for key in state:
        for prefix, what in _FOREIGN_PREFIXES:
            if key.startswith(prefix):
                raise CheckpointError(
                    f"{file}: not open_clip's plain CLIP layout: {what} (key {key}); HPSv2.1 is an open_clip "
                    f"ViT-H-14; {fix}"
                )
        for part, what in _FOREIGN_PARTS:
            if part in key:
                raise CheckpointError(
                    f"{file}: not open_clip's plain CLIP layout: {what} (key {key}); HPSv2.1 is an open_clip "
                    f"ViT-H-14; {fix}"
                )

    def shape(key: str, ndim: int) -> tuple[int, ...]:
        if key not in state:
            raise CheckpointError(f"{file}: not an open_clip CLIP state dict: no key {key}; {fix}")
        if state[key].ndim != ndim:
            raise CheckpointError(
                f"{file}: {key} has shape {tuple(state[key].shape)}, not {ndim}-D as in open_clip's CLIP; {fix}"
            )
        return tuple(state[key].shape)

    width, channels, patch, patch_w = shape("visual.conv1.weight", 4)
    if channels != 3 or patch != patch_w:
        raise CheckpointError(
            f"{file}: visual.conv1.weight has shape {(width, channels, patch, patch_w)}, not an RGB square-patch "
            f"embedding; {fix}"
        )
    positions = shape("visual.positional_embedding", 2)[0] - 1  # the patches, after the class token
    grid = math.isqrt(max(positions, 0))
    if positions < 1 or grid * grid != positions:
        raise CheckpointError(
            f"{file}: visual.positional_embedding has {positions + 1} rows, not a square patch grid plus the class "
            f"token; {fix}"
        )
    vocab, text_width = shape("token_embedding.weight", 2)
    layers: dict[str, set[int]] = {"visual.transformer": set(), "transformer": set()}
    for key in state:
        match = _LAYER.match(key)
        if match:
            layers[match.group(1)].add(int(match.group(2)))
    for tower, head_width, tower_width in (
        ("vision", VISION_HEAD_WIDTH, width),
        ("text", TEXT_HEAD_WIDTH, text_width),
    ):
        if tower_width % head_width:
            raise CheckpointError(
                f"{file}: {tower} width {tower_width} is not a multiple of ViT-H-14's {head_width}-wide attention "
                f"heads: not an HPSv2 (ViT-H-14) checkpoint; {fix}"
            )
    layout = OpenClipLayout(
        embed_dim=shape("visual.proj", 2)[1],
        vision_width=width,
        vision_layers=max(layers["visual.transformer"], default=-1) + 1,
        vision_mlp=shape("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        patch_size=patch,
        image_size=grid * patch,
        text_width=text_width,
        text_layers=max(layers["transformer"], default=-1) + 1,
        text_mlp=shape("transformer.resblocks.0.mlp.c_fc.weight", 2)[0],
        vocab_size=vocab,
        context_length=shape("positional_embedding", 2)[0],
    )
    expected = layout.expected_shapes()
    missing = [key for key in expected if key not in state]
    if missing:
        raise CheckpointError(f"{file}: not a complete open_clip CLIP state dict: missing {_keys(missing)}; {fix}")
    unexpected = [key for key in state if key not in expected]
    if unexpected:
        raise CheckpointError(
            f"{file}: not open_clip's plain CLIP layout: unexpected {_keys(unexpected)}; HPSv2.1 is an open_clip "
            f"ViT-H-14; {fix}"
        )
    wrong = [
        f"{key} {tuple(state[key].shape)} (not {want})" for key, want in expected.items() if state[key].shape != want
    ]
    if wrong:
        raise CheckpointError(f"{file}: shapes that do not fit one open_clip CLIP: {_keys(wrong)}; {fix}")
    not_float = [key for key in expected if not state[key].is_floating_point()]
    if not_float:
        raise CheckpointError(f"{file}: not floating-point weights: {_keys(not_float)}; {fix}")
    return layout


def hf_state_dict(state: Mapping[str, torch.Tensor], layout: OpenClipLayout) -> dict[str, torch.Tensor]:
    """``state`` (an open_clip CLIP's) under transformers' CLIPModel keys.

    nn.MultiheadAttention's fused ``in_proj_weight`` / ``in_proj_bias`` stack q, k, v along dim 0 (split in that
    order); open_clip's projections are ``x @ proj`` (``proj`` is [width, embed]), an nn.Linear weight is
    [embed, width]: transposed. The rest is renamed (views of ``state``, no copies).
    """
    out: dict[str, torch.Tensor] = {
        "logit_scale": state["logit_scale"],
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": state["positional_embedding"],
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],  # sic: transformers' spelling
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
    }
    renames = {
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "attn.out_proj": "self_attn.out_proj",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for source, target, layers in (
        ("visual.transformer.resblocks", "vision_model.encoder.layers", layout.vision_layers),
        ("transformer.resblocks", "text_model.encoder.layers", layout.text_layers),
    ):
        for i in range(layers):
            src, dst = f"{source}.{i}.", f"{target}.{i}."
            for name, (weight, bias) in zip(
                ("q_proj", "k_proj", "v_proj"),
                zip(
                    state[src + "attn.in_proj_weight"].chunk(3, dim=0),
                    state[src + "attn.in_proj_bias"].chunk(3, dim=0),
                    strict=True,
                ),
                strict=True,
            ):
                out[f"{dst}self_attn.{name}.weight"] = weight
                out[f"{dst}self_attn.{name}.bias"] = bias
            for old, new in renames.items():
                for suffix in ("weight", "bias"):
                    out[f"{dst}{new}.{suffix}"] = state[f"{src}{old}.{suffix}"]
    return out


def clip_config(layout: OpenClipLayout, *, bos_token_id: int, eos_token_id: int, pad_token_id: int) -> Any:
    """transformers' CLIPConfig of the model ``layout`` describes (exact GELU, LayerNorm eps 1e-5).

    ``eos_token_id``: the tokenizer's end-of-text id, where the text tower pools (the first one in each text).
    """
    from transformers import CLIPConfig

    common = {"hidden_act": "gelu", "layer_norm_eps": LAYER_NORM_EPS, "projection_dim": layout.embed_dim}
    text = {
        **common,
        "vocab_size": layout.vocab_size,
        "hidden_size": layout.text_width,
        "intermediate_size": layout.text_mlp,
        "num_hidden_layers": layout.text_layers,
        "num_attention_heads": layout.text_heads,
        "max_position_embeddings": layout.context_length,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
    }
    vision = {
        **common,
        "hidden_size": layout.vision_width,
        "intermediate_size": layout.vision_mlp,
        "num_hidden_layers": layout.vision_layers,
        "num_attention_heads": layout.vision_heads,
        "image_size": layout.image_size,
        "patch_size": layout.patch_size,
        "num_channels": 3,
    }
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=layout.embed_dim)


def check_tokenizer(tokenizer: Any, layout: OpenClipLayout, root: Path, fix: str) -> None:
    """The directory's tokenizer must be the checkpoint's: the same vocabulary size, and CLIP's special tokens at
    its end (end-of-text the largest id, where open_clip's ``argmax(ids)`` pools; start-of-text just before)."""
    size, vocab = len(tokenizer), layout.vocab_size
    if size != vocab:
        raise CheckpointError(
            f"{root}: the tokenizer has {size} tokens but the checkpoint's text tower {vocab}: not its CLIP "
            f"tokenizer; {fix}"
        )
    if tokenizer.eos_token_id != vocab - 1 or tokenizer.bos_token_id != vocab - 2:
        raise CheckpointError(
            f"{root}: the tokenizer's start/end-of-text ids are {tokenizer.bos_token_id}/{tokenizer.eos_token_id}, "
            f"not CLIP's {vocab - 2}/{vocab - 1}: not the CLIP tokenizer; {fix}"
        )


def load_model(
    file: Path, tokenizer: Any, *, device: torch.device, dtype: torch.dtype, fix: str, root: Path | None = None
) -> Any:
    """transformers' CLIPModel holding the open_clip CLIP of ``file``, on ``device`` in ``dtype``, in eval mode.

    The model is built without initialising its weights (every one is then loaded), on ``device`` directly.
    """
    from transformers import CLIPModel
    from transformers.initialization import no_init_weights

    state = read_state_dict(file, fix)
    layout = layout_of(state, file, fix)
    check_tokenizer(tokenizer, layout, root or file.parent, fix)
    config = clip_config(
        layout,
        bos_token_id=int(tokenizer.bos_token_id),
        eos_token_id=int(tokenizer.eos_token_id),
        pad_token_id=int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id),
    )
    with quiet_hf(), torch.device(device), no_init_weights():
        model = CLIPModel(config)
    model = model.to(dtype)
    try:
        model.load_state_dict(hf_state_dict(state, layout), strict=True)  # copies, casting to dtype
    except RuntimeError as exc:  # a transformers whose CLIPModel has other keys: one line, not a traceback
        raise CheckpointError(
            f"{file}: cannot load it into transformers' CLIPModel: {_first_line(exc)}; {fix}"
        ) from exc
    return model.eval().requires_grad_(False)


def clean_text(text: str) -> str:
    """open_clip's ``basic_clean`` without its ``ftfy.fix_text``: HTML entities unescaped twice, then stripped
    (whitespace and case: the CLIP tokenizer's normaliser, as open_clip's ``whitespace_clean(...).lower()``)."""
    return html.unescape(html.unescape(text)).strip()


def pixel_values(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """HPSv2's ``preprocess_val`` of ``images`` as a float32 [N, 3, size, size] batch (see the module docstring).

    Per image: RGB (HPSv2 keeps RGBA, which its 3-channel model then rejects), ``ToTensor`` (uint8 / 255 in
    float32), ``ResizeMaxSize(size)``: scale = size / longest side, new sides ``round(side * scale)`` (Python's
    round, as HPSv2), antialiased bicubic ``interpolate`` of the float tensor (torchvision's tensor ``resize``),
    zero padding (pad_w // 2 left, the rest right; the same vertically), then ``(x - mean) / std`` in float32 as
    torchvision's ``Normalize``. One deviation: HPSv2 neither resizes nor pads an image whose longest side is
    already ``size``; a non-square one then fails in its model, here it is padded like any other.
    """
    mean = torch.tensor(OPENAI_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(OPENAI_STD, dtype=torch.float32).view(3, 1, 1)
    batch = []
    for image in images:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        pixels = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
        x = pixels.to(torch.float32).div(255)
        height, width = x.shape[1:]
        scale = size / float(max(height, width))
        if scale != 1.0:
            new_size = (round(height * scale), round(width * scale))
            x = torch.nn.functional.interpolate(
                x[None], size=new_size, mode="bicubic", align_corners=False, antialias=True
            )[0]
        pad_h, pad_w = size - x.shape[1], size - x.shape[2]
        if pad_h or pad_w:
            x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=0.0)
        batch.append(x.sub(mean).div(std))
    return torch.stack(batch)

"""Qwen3-VL (``Qwen3VLForConditionalGeneration``): configs, the processor, a tiny offline checkpoint, loading.

The tiny preset keeps what VL experiments index into (36 text layers so hidden-layer indices -37..36 are the real
range, the real special-token ids, the real processor numbers and chat template, three DeepStack taps) and shrinks
only the widths; its text width is 32, the tiny Z-Image DiT's ``cap_feat_dim``, so VL features condition the tiny
DiT as Qwen3-VL-4B's 2560-wide features condition the real one.

Light functions (:func:`validate_vl_checkpoint`, :func:`vl_image_token_count`, :func:`tiny_vl_path` on a cached
folder) read JSON only: torch and transformers are imported by the functions that build or load models.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_dit.constants import (
    ENDOFTEXT_ID,
    IM_END_ID,
    IMAGE_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
)
from llm_dit.errors import CheckpointError, LlmDitError

if TYPE_CHECKING:
    import torch
    from transformers import ProcessorMixin

__all__ = [
    "FULL_VL_CONFIG",
    "QWEN3_VL_CHAT_TEMPLATE",
    "TINY_VL_CONFIG",
    "TINY_VL_VERSION",
    "VIDEO_PAD_ID",
    "VL_GENERATION_CONFIG",
    "VL_PREPROCESSOR_CONFIG",
    "VLCheckpointInfo",
    "build_tiny_vl",
    "build_vl_processor",
    "load_vl",
    "load_vl_processor",
    "make_tiny_vl_model",
    "tiny_vl_path",
    "validate_vl_checkpoint",
    "vl_chat_text",
    "vl_image_token_count",
    "vl_processor_class",
]

# Bump when the tiny VL config or its init changes: the cache folder is named after it.
TINY_VL_VERSION = 1

VIDEO_PAD_ID = 151656

# The real Qwen3-VL-4B-Instruct config.json (rope_scaling/rope_theta in the transformers 5 spelling,
# rope_parameters). The class defaults describe a bigger model: never build from them.
FULL_VL_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3VLForConditionalGeneration"],
    "model_type": "qwen3_vl",
    "image_token_id": IMAGE_PAD_ID,
    "video_token_id": VIDEO_PAD_ID,
    "vision_start_token_id": VISION_START_ID,
    "vision_end_token_id": VISION_END_ID,
    "tie_word_embeddings": True,
    "text_config": {
        "model_type": "qwen3_vl_text",
        "vocab_size": 151936,
        "hidden_size": 2560,
        "intermediate_size": 9728,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "hidden_act": "silu",
        "max_position_embeddings": 262144,
        "initializer_range": 0.02,
        "rms_norm_eps": 1e-6,
        "use_cache": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [24, 20, 20],
            "mrope_interleaved": True,
        },
    },
    "vision_config": {
        "model_type": "qwen3_vl",  # as in the released file; transformers renames it to qwen3_vl_vision
        "depth": 24,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_heads": 16,
        "hidden_act": "gelu_pytorch_tanh",
        "in_channels": 3,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "out_hidden_size": 2560,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": [5, 11, 17],
        "initializer_range": 0.02,
    },
}

_TINY_VL_HIDDEN = 32  # = tiny.py's _TINY_TEXT_HIDDEN, the tiny DiT's cap_feat_dim


def _tiny_vl_config() -> dict[str, Any]:
    config = copy.deepcopy(FULL_VL_CONFIG)
    config["text_config"].update(
        hidden_size=_TINY_VL_HIDDEN,
        intermediate_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    # MRoPE sections (t, h, w) sum to head_dim / 2 = 8, like [24, 20, 20] sums to 64.
    config["text_config"]["rope_parameters"]["mrope_section"] = [4, 2, 2]
    config["vision_config"].update(
        depth=6,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=_TINY_VL_HIDDEN,
        deepstack_visual_indexes=[1, 3, 5],  # three taps spread over the depth, as 5/11/17 over 24
    )
    return config


TINY_VL_CONFIG: dict[str, Any] = _tiny_vl_config()

# preprocessor_config.json of the real checkpoints (Qwen2-VL image processor rule, Qwen3-VL numbers).
VL_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "patch_size": 16,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "min_pixels": 65536,  # 256^2
    "max_pixels": 16777216,  # 4096^2
}

# generation_config.json of Qwen3-VL-4B-Instruct.
VL_GENERATION_CONFIG: dict[str, Any] = {
    "bos_token_id": ENDOFTEXT_ID,
    "pad_token_id": ENDOFTEXT_ID,
    "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "top_k": 20,
}

# The Qwen3-VL Instruct chat template, verbatim (5292 bytes, sha256 3636d0f0...a489e4; the Instruct checkpoints
# share it): no think block, one ``<|vision_start|><|image_pad|><|vision_end|>`` per image, which the processor
# expands to the image's token count.
QWEN3_VL_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' }}
        {%- if messages[0].content is string %}
            {{- messages[0].content }}
        {%- else %}
            {%- for content in messages[0].content %}
                {%- if 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set image_count = namespace(value=0) %}
{%- set video_count = namespace(value=0) %}
{%- for message in messages %}
    {%- if message.role == "user" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role + '\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content_item in message.content %}
                {%- if 'text' in content_item %}
                    {{- content_item.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and message.content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {%- if message.content is string %}
            {{- message.content }}
        {%- else %}
            {%- for content in message.content %}
                {%- if content.type == 'image' or 'image' in content or 'image_url' in content %}
                    {%- set image_count.value = image_count.value + 1 %}
                    {%- if add_vision_id %}Picture {{ image_count.value }}: {% endif -%}
                    <|vision_start|><|image_pad|><|vision_end|>
                {%- elif content.type == 'video' or 'video' in content %}
                    {%- set video_count.value = video_count.value + 1 %}
                    {%- if add_vision_id %}Video {{ video_count.value }}: {% endif -%}
                    <|vision_start|><|video_pad|><|vision_end|>
                {%- elif 'text' in content %}
                    {{- content.text }}
                {%- endif %}
            {%- endfor %}
        {%- endif %}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501  (the verbatim template)


_LAYOUT_HINT = (
    "a Qwen3-VL folder needs config.json (model_type qwen3_vl), model weights, preprocessor_config.json and "
    "tokenizer.json; build a tiny one with llm_dit.models.vl.build_tiny_vl"
)


@dataclass(frozen=True)
class VLCheckpointInfo:
    """What the light paths need from a Qwen3-VL folder (read from JSON, no weights)."""

    path: Path
    num_layers: int
    hidden_size: int
    patch_size: int
    merge_size: int
    min_pixels: int
    max_pixels: int


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path} is not readable JSON ({type(exc).__name__}); restore or rebuild the folder"
        ) from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object; restore or rebuild the folder")
    return data


def _preprocessor_numbers(root: Path) -> dict[str, Any]:
    """Image-processor settings from preprocessor_config.json (or processor_config.json's image_processor)."""
    pre = root / "preprocessor_config.json"
    data = _read_json(pre) if pre.is_file() else _read_json(root / "processor_config.json").get("image_processor", {})
    size = data.get("size") or {}
    return {
        "patch_size": int(data.get("patch_size", 16)),
        "merge_size": int(data.get("merge_size", 2)),
        "min_pixels": int(data.get("min_pixels") or size.get("shortest_edge") or VL_PREPROCESSOR_CONFIG["min_pixels"]),
        "max_pixels": int(data.get("max_pixels") or size.get("longest_edge") or VL_PREPROCESSOR_CONFIG["max_pixels"]),
    }


def validate_vl_checkpoint(path: str | Path) -> VLCheckpointInfo:
    """Check that ``path`` is a usable Qwen3-VL folder and read its numbers (JSON only: no torch, no weights).

    Raises CheckpointError (one line naming the file and the fix) for a missing folder or file, another model
    type or a config without the text tower's size.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        what = "is not a directory" if root.exists() else "does not exist"
        raise CheckpointError(f"VL checkpoint {root} {what}; {_LAYOUT_HINT}")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"VL checkpoint {root} has no config.json; {_LAYOUT_HINT}")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    if model_type != "qwen3_vl":
        raise CheckpointError(
            f"{config_path}: model_type is {model_type!r}, not 'qwen3_vl'; point the VL source at a Qwen3-VL "
            "checkpoint (e.g. Qwen3-VL-4B-Instruct)"
        )
    text = config.get("text_config")
    if not isinstance(text, dict):
        raise CheckpointError(f"{config_path} has no text_config; restore the checkpoint's config.json")
    for key in ("num_hidden_layers", "hidden_size"):
        if not isinstance(text.get(key), int):
            raise CheckpointError(
                f"{config_path}: text_config has no integer {key!r}; restore the checkpoint's config.json"
            )
    if not (root / "preprocessor_config.json").is_file() and not (root / "processor_config.json").is_file():
        raise CheckpointError(f"VL checkpoint {root} has no preprocessor_config.json; {_LAYOUT_HINT}")
    if not (root / "tokenizer.json").is_file() and not (
        (root / "vocab.json").is_file() and (root / "merges.txt").is_file()
    ):
        raise CheckpointError(
            f"VL checkpoint {root} has no tokenizer.json (or vocab.json + merges.txt); {_LAYOUT_HINT}"
        )
    if not any(root.glob("*.safetensors")) and not any(root.glob("*.bin")):
        raise CheckpointError(f"VL checkpoint {root} has no weight files (*.safetensors); {_LAYOUT_HINT}")
    return VLCheckpointInfo(
        path=root,
        num_layers=int(text["num_hidden_layers"]),
        hidden_size=int(text["hidden_size"]),
        **_preprocessor_numbers(root),
    )


def _smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """transformers' Qwen2-VL ``smart_resize``: sides to multiples of ``factor``, area clamped, aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise LlmDitError(f"image {width}x{height} has an aspect ratio above 200, which Qwen3-VL refuses; crop it")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def vl_image_token_count(width: int, height: int, info: VLCheckpointInfo | None = None) -> int:
    """``<|image_pad|>`` tokens for one ``width`` x ``height`` image (markers not counted), without torch.

    The processor's rule: sides rounded to multiples of patch*merge (32), area clamped to min/max pixels,
    then (H/patch)(W/patch)/merge^2: 1024^2 -> 1024, 1024x768 -> 768, 512^2 -> 256, 256^2 and smaller squares -> 64
    (a smaller non-square image is scaled up to the minimum area: 96x64 -> 70).
    ``info`` None: the real Qwen3-VL processor numbers.
    """
    if width < 1 or height < 1:
        raise LlmDitError(f"image size {width}x{height} is empty; give a positive width and height")
    n = VL_PREPROCESSOR_CONFIG if info is None else info.__dict__
    patch, merge = int(n["patch_size"]), int(n["merge_size"])
    h, w = _smart_resize(height, width, patch * merge, int(n["min_pixels"]), int(n["max_pixels"]))
    return (h // patch) * (w // patch) // (merge * merge)


def vl_chat_text(image_count: int, text: str, system_prompt: str | None = None) -> str:
    """One VL input as the Instruct template renders it with the generation prompt, before the processor expands
    each ``<|image_pad|>`` (what ``VLEncoder.format`` gets from the real template: tested equal), without torch."""
    system = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
    images = "<|vision_start|><|image_pad|><|vision_end|>" * image_count
    return f"{system}<|im_start|>user\n{images}{text}<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------------------------------
# The processor
# --------------------------------------------------------------------------------------------------


@cache
def vl_processor_class() -> type[ProcessorMixin]:
    """``Qwen3VLProcessor`` without the video slot (built on first use: it imports transformers).

    transformers cannot build the real class without torchvision (its video processor is torchvision-only);
    images, the chat template, token expansion and ``mm_token_type_ids`` (which MRoPE needs) are the real
    class's own code.
    """
    from transformers import Qwen3VLProcessor

    class Qwen3VLImageProcessor(Qwen3VLProcessor):
        """Qwen3-VL processor for images and text only (no video processor)."""

        def __init__(
            self, image_processor: Any = None, tokenizer: Any = None, chat_template: str | None = None, **kwargs: Any
        ) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    Qwen3VLImageProcessor.__module__ = __name__
    Qwen3VLImageProcessor.__qualname__ = "Qwen3VLImageProcessor"
    return Qwen3VLImageProcessor


def build_vl_processor() -> ProcessorMixin:
    """The Qwen3-VL processor, built offline: the real Qwen3 tokenizer, image numbers and Instruct template."""
    from transformers import Qwen2VLImageProcessorPil

    from llm_dit.models.tokenizer import build_qwen3_tokenizer

    tokenizer = build_qwen3_tokenizer()
    tokenizer.chat_template = QWEN3_VL_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessorPil(**VL_PREPROCESSOR_CONFIG)
    return vl_processor_class()(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN3_VL_CHAT_TEMPLATE
    )


def load_vl_processor(path: str | Path) -> ProcessorMixin:
    """The processor of a local Qwen3-VL folder (offline)."""
    from llm_dit.models.devices import quiet_hf

    with quiet_hf():
        return vl_processor_class().from_pretrained(str(path), local_files_only=True)


# --------------------------------------------------------------------------------------------------
# Building and loading
# --------------------------------------------------------------------------------------------------


def make_tiny_vl_model(
    seed: int = 0,
    config: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Any:
    """A randomised ``Qwen3VLForConditionalGeneration`` of ``config`` (default: the tiny one; ``FULL_VL_CONFIG`` for
    full-size benchmarks), created and randomised directly on ``device`` in ``dtype`` (None: float32)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    from llm_dit.models.tiny import _build_context, _component_seed, randomize_

    dtype = torch.float32 if dtype is None else dtype
    cfg = Qwen3VLConfig(**copy.deepcopy(TINY_VL_CONFIG if config is None else config))
    with _build_context(torch.device(device), dtype):
        model = Qwen3VLForConditionalGeneration(cfg)
    randomize_(model, _component_seed(seed, "vl"))
    return model.eval().requires_grad_(False)


def build_tiny_vl(path: str | Path, seed: int = 0, *, exist_ok: bool = False) -> Path:
    """Write a complete tiny Qwen3-VL folder (the official layout) to ``path`` and return it.

    Built in a hidden sibling folder and renamed into place (:func:`llm_dit.models.tiny.build_folder`),
    so a crash never leaves half a checkpoint. If ``path`` exists: FileExistsError, or with ``exist_ok`` the
    existing folder is kept and returned.
    """
    from transformers import GenerationConfig

    from llm_dit.models.devices import quiet_hf
    from llm_dit.models.tiny import build_folder

    def write(staging: Path) -> None:
        model = make_tiny_vl_model(seed)
        model.generation_config = GenerationConfig(**VL_GENERATION_CONFIG)
        with quiet_hf():
            model.save_pretrained(staging, safe_serialization=True)
            processor = build_vl_processor()
            processor.save_pretrained(staging)
            # The released layout keeps the image processor in preprocessor_config.json; transformers 5 reads it
            # from there when processor_config.json has no entry for it.
            processor.image_processor.save_pretrained(staging)
        _split_processor_config(staging)
        (staging / "llm_dit_tiny.json").write_text(
            json.dumps({"preset": "tiny-vl", "tiny_vl_version": TINY_VL_VERSION, "seed": seed}, indent=2) + "\n"
        )

    return build_folder(path, write, exist_ok=exist_ok)


def _split_processor_config(folder: Path) -> None:
    """Drop the image processor from processor_config.json (it lives in preprocessor_config.json)."""
    proc = folder / "processor_config.json"
    if not proc.is_file():
        return
    data = json.loads(proc.read_text(encoding="utf-8"))
    data.pop("image_processor", None)
    proc.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def tiny_vl_path(seed: int = 0) -> Path:
    """The cached tiny Qwen3-VL folder for ``seed``, built on first use."""
    from llm_dit.models.tiny import cached_tiny_folder

    name = f"tiny-vl-v{TINY_VL_VERSION}-seed{seed}"
    return cached_tiny_folder(name, build_tiny_vl, "config.json", "tiny VL checkpoint", seed)


def load_vl(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> tuple[Any, Any]:
    """``(Qwen3VLForConditionalGeneration, processor)`` of a local folder, validated first, in eval mode."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from llm_dit.models.devices import quiet_hf

    info = validate_vl_checkpoint(path)
    dtype = torch.float32 if dtype is None else dtype
    with quiet_hf():
        model = Qwen3VLForConditionalGeneration.from_pretrained(str(info.path), dtype=dtype, local_files_only=True)
    model = model.to(device).eval().requires_grad_(False)
    return model, load_vl_processor(info.path)

"""Qwen3-VL as a conditioning source: images + text -> hidden states of every layer, cut by token mode.

One forward of ``Qwen3VLModel`` (the language model of ``Qwen3VLForConditionalGeneration``, without the LM head
whose logits conditioning never reads) with ``output_hidden_states=True`` gives 37 states for Qwen3-VL-4B: [0] the
input embeddings (image rows = merged vision features), [k] the raw output of text layer k-1, [-1] the
final-normed state, the same rule and layer range (-37..36) as the text encoder. DeepStack adds the vision taps
to the image rows right after text layers 0, 1, 2, but transformers captures each layer's output before that
addition, so ``hidden_states[1..3]`` exclude it (text rows are unaffected).

The chat format is the Instruct template with the generation prompt (as Z-Image feeds Qwen3-4B its prompt
followed by the assistant turn): ``[<|im_start|>system\\n{system}<|im_end|>\\n]<|im_start|>user\\n`` then one
``<|vision_start|><|image_pad|>*N<|vision_end|>`` per image, the text, ``<|im_end|>\\n<|im_start|>assistant\\n``.

Token modes (:func:`token_mode_rows`), from the real special-token ids, for any number of images: ``full`` every
row; ``image_only`` every image span with its markers; ``image_no_markers`` the ``<|image_pad|>`` rows only;
``text_only`` every row outside the image spans (the template's rows and the text).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from llm_dit.conditioning.tokenization import check_layer_indices
from llm_dit.constants import (
    DEFAULT_CAPTION_PROMPT,
    DEFAULT_VL_LAYER,
    IMAGE_PAD_ID,
    VISION_END_ID,
    VISION_START_ID,
    VL_TOKEN_MODES,
)
from llm_dit.errors import LlmDitError

__all__ = ["VLEncoder", "VLForward", "token_mode_rows", "vl_messages"]

ImageInput = Any  # a PIL image, or a path to an image file


@dataclass
class VLForward:
    """One VL forward: the token ids, every hidden state (batch dimension removed) and what the record needs."""

    input_ids: list[int]
    hidden_states: tuple[Tensor, ...]  # num_layers + 1 entries, each [L, D]
    image_token_counts: list[int]  # <|image_pad|> rows per image, in order
    formatted_text: str  # the template's text before the processor expanded the image pads
    num_layers: int

    @property
    def length(self) -> int:
        return len(self.input_ids)


def token_mode_rows(forward: VLForward | Sequence[int], mode: str) -> Tensor:
    """bool ``[L]``: the rows token mode ``mode`` keeps, from the special-token ids (any number of images)."""
    if mode not in VL_TOKEN_MODES:
        raise LlmDitError(f"unknown vl_token_mode {mode!r}; use one of {', '.join(VL_TOKEN_MODES)}")
    ids = torch.tensor(list(forward.input_ids if isinstance(forward, VLForward) else forward), dtype=torch.long)
    if mode == "full":
        return torch.ones(ids.shape[0], dtype=torch.bool)
    if mode == "image_no_markers":
        return ids == IMAGE_PAD_ID
    starts = (ids == VISION_START_ID).long()
    ends = (ids == VISION_END_ID).long()
    # Inside a span: more starts than ends so far, counting the closing marker itself as inside.
    in_span = (starts.cumsum(0) - ends.cumsum(0) + ends) > 0
    return in_span if mode == "image_only" else ~in_span


def vl_messages(image_count: int, text: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """The chat messages of one VL input: an optional system turn, then one user turn [images..., text]."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(image_count)]
    if text:
        content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = []
    if system_prompt:
        messages.append({"role": "system", "content": [{"type": "text", "text": system_prompt}]})
    messages.append({"role": "user", "content": content})
    return messages


def _rgb(image: ImageInput) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image).expanduser()
    if not path.is_file():
        raise LlmDitError(f"VL image {path} does not exist; give an image file")
    with Image.open(path) as opened:
        return opened.convert("RGB")


class VLEncoder:
    """Qwen3-VL hidden states for conditioning, and seeded captions. The model loads on first use."""

    def __init__(
        self,
        model_loader: Callable[[], tuple[Any, Any]],
        *,
        num_layers: int,
        hidden_size: int,
        path: Path | None = None,
    ) -> None:
        self._loader = model_loader
        self._model: Any = None
        self._processor: Any = None
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.path = path

    @classmethod
    def from_pretrained(
        cls, model_path: str | Path | None = None, *, device: str = "auto", torch_dtype: str = "auto"
    ) -> VLEncoder:
        """Encoder of a local Qwen3-VL folder; None or "tiny": the built-in tiny twin (built and cached on first use).

        The folder is validated here (JSON only); weights load on the first forward.
        """
        from llm_dit.models import devices
        from llm_dit.models.vl import load_vl, tiny_vl_path, validate_vl_checkpoint

        path = tiny_vl_path() if model_path is None or str(model_path) == "tiny" else Path(model_path)
        info = validate_vl_checkpoint(path)
        dev = devices.resolve_device(device, "vl.device")
        dtype = devices.resolve_dtype(torch_dtype, dev)
        return cls(
            lambda: load_vl(info.path, dev, dtype),
            num_layers=info.num_layers,
            hidden_size=info.hidden_size,
            path=info.path,
        )

    def _load(self) -> None:
        if self._model is None:
            self._model, processor = self._loader()
            if self._processor is None:
                self._processor = processor

    @property
    def model(self) -> Any:
        """The ``Qwen3VLForConditionalGeneration``."""
        self._load()
        return self._model

    @property
    def processor(self) -> Any:
        if self._processor is None:
            self._load()
        return self._processor

    def unload(self) -> None:
        """Free the model (it reloads on next use); the processor stays."""
        self._model = None

    # -- conditioning ---------------------------------------------------------------------------------

    def format(self, image_count: int, text: str, system_prompt: str | None = None) -> str:
        """The chat text of one input, before the processor expands each ``<|image_pad|>`` to its token count."""
        return self.processor.apply_chat_template(
            vl_messages(image_count, text, system_prompt), add_generation_prompt=True, tokenize=False
        )

    def _inputs(self, images: Sequence[ImageInput], text: str, system_prompt: str | None) -> tuple[str, Any]:
        formatted = self.format(len(images), text, system_prompt)
        pil = [_rgb(image) for image in images]
        inputs = self.processor(text=[formatted], images=pil or None, return_tensors="pt")
        return formatted, inputs

    def _on_model(self, inputs: Any) -> dict[str, Any]:
        """The processor's tensors on the model's device, pixels in its dtype."""
        weight = next(self.model.parameters())
        batch = {k: (v.to(weight.device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(weight.dtype)
        return batch

    @torch.no_grad()
    def forward(self, images: Sequence[ImageInput], text: str, system_prompt: str | None = None) -> VLForward:
        """Every hidden state of one input (images in order, then the text), from one forward."""
        formatted, inputs = self._inputs(images, text, system_prompt)
        model, batch = self.model, self._on_model(inputs)
        # The language model alone: its hidden states are those of the full model, without the vocabulary logits.
        out = model.model(**batch, output_hidden_states=True, use_cache=False, return_dict=True)
        grid = inputs.get("image_grid_thw")
        merge = int(self.processor.image_processor.merge_size)
        counts = [] if grid is None else [int(t * h * w) // (merge * merge) for t, h, w in grid.tolist()]
        return VLForward(
            input_ids=inputs["input_ids"][0].tolist(),
            hidden_states=tuple(h[0] for h in out.hidden_states),
            image_token_counts=counts,
            formatted_text=formatted,
            num_layers=self.num_layers,
        )

    def select(self, forward: VLForward, layer: int = DEFAULT_VL_LAYER, mode: str = "full") -> Tensor:
        """Rows ``[R, D]`` of ``forward`` at hidden layer ``layer`` under token mode ``mode``."""
        check_layer_indices([layer], forward.num_layers)
        keep = token_mode_rows(forward, mode)
        if not bool(keep.any()):
            fix = "give vl_image" if mode in ("image_only", "image_no_markers") else "use another vl_token_mode"
            raise LlmDitError(f"vl_token_mode {mode!r} selects no rows of this VL input; {fix}")
        states = forward.hidden_states[layer]
        return states[keep.to(states.device)]

    def encode(
        self,
        images: Sequence[ImageInput],
        text: str,
        *,
        layer: int = DEFAULT_VL_LAYER,
        token_mode: str = "full",
        system_prompt: str | None = None,
    ) -> Tensor:
        """Caption features ``[R, D]`` of one input at one layer and token mode."""
        check_layer_indices([layer], self.num_layers)
        token_mode_rows([], token_mode)  # an unknown mode fails before the forward
        return self.select(self.forward(images, text, system_prompt), layer, token_mode)

    # -- captioning -----------------------------------------------------------------------------------

    @torch.no_grad()
    def caption(
        self,
        image: ImageInput,
        *,
        prompt: str = DEFAULT_CAPTION_PROMPT,
        seed: int = 0,
        max_new_tokens: int = 256,
    ) -> str:
        """A caption of ``image``, sampled with the checkpoint's generation settings (Qwen3-VL-4B-Instruct:
        temperature 0.7, top_p 0.8, top_k 20) from a seeded generator: the same seed gives the same caption on the
        same device and dtype. The global RNG is left as it was."""
        if max_new_tokens < 1:
            raise LlmDitError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        _, inputs = self._inputs([image], prompt, None)
        model, batch = self.model, self._on_model(inputs)
        device = batch["input_ids"].device
        fork = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork):
            torch.manual_seed(seed)
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=True)
        new_tokens = out[0, batch["input_ids"].shape[1] :]
        return self.processor.tokenizer.decode(new_tokens, skip_special_tokens=True).strip()

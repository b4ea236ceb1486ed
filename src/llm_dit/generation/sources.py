"""The conditioning sources beside the text encoder (Qwen3-VL, Qwen3-Embedding-4B): loaded on first use, each distinct
input encoded once, and the Qwen3-4B reference statistics that masking and normalisation compare with.

A VL input is ``(images, text, system prompt)``: one forward gives every hidden layer, so all the layers and token
modes a sweep asks of it are cut from that one forward, which is then dropped (a 1024^2 image is ~1100 rows x 37
layers: keeping forwards would cost ~0.2 GB each in bf16). An embedding input is ``(text, format, instruction,
eot rule)``, likewise one forward for all its layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llm_dit.conditioning.compose import ComposedConditioning, SourceRows
from llm_dit.config import ConditioningSettings, EncoderSettings, SourceModelSettings
from llm_dit.constants import DEFAULT_EMBEDDING_TASK
from llm_dit.errors import LlmDitError
from llm_dit.models.sources import source_fingerprint, source_path

if TYPE_CHECKING:
    from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.conditioning.vl_encoder import VLEncoder
    from llm_dit.generation.request import GenerationRequest

__all__ = ["SourceEncoders"]

_NEUTRAL = "<mid-gray>"  # the default neutral image of a style delta (a key, not a path)


def _vl_passes(c: ConditioningSettings, prompt: str | None) -> dict[str, list[tuple[tuple[str, ...], str, str | None]]]:
    """The VL forwards a run needs, per role: ``(images, text, system prompt)`` each."""
    text = c.vl_text if c.vl_text is not None else (prompt or "")
    if c.style_image is not None:
        neutral = c.neutral_image if c.neutral_image is not None else f"{_NEUTRAL}{c.style_image}"
        return {
            "style": [((c.style_image,), text, c.vl_system_prompt)],
            "neutral": [((neutral,), text, c.vl_system_prompt)],
        }
    images = tuple(c.vl_image or ())
    if c.vl_image_weights is not None:  # multi-reference: a pass per image
        return {"main": [((image,), text, c.vl_system_prompt) for image in images]}
    return {"main": [(images, text, c.vl_system_prompt)]}


def _embedding_key(c: ConditioningSettings, prompt: str | None) -> tuple[str, str, str | None, bool]:
    instruction = (c.embedding_instruction or DEFAULT_EMBEDDING_TASK) if c.embedding_format == "instruction" else None
    return (prompt or "", c.embedding_format, instruction, c.embedding_keep_eot)


def _load_image(key: str) -> Any:
    from PIL import Image

    if key.startswith(_NEUTRAL):
        from llm_dit.conditioning.compose import gray_like

        with Image.open(key[len(_NEUTRAL) :]) as style:
            return gray_like(*style.size)
    try:
        with Image.open(Path(key).expanduser()) as image:  # as the check read it (files.input_image)
            return image.convert("RGB")
    except OSError as exc:  # changed since the check (which decodes every input image whole)
        raise LlmDitError(f"VL image {key!r} can no longer be read ({exc}); restore it and run again") from None


def _image_sha256(key: str) -> str | None:
    """The sha256 of an input image's bytes (None for the generated mid-gray neutral image); the check's own,
    memoised per file version (:func:`llm_dit.files.input_image`)."""
    from llm_dit.files import input_image

    return None if key.startswith(_NEUTRAL) else input_image(key, "vl_image")[1]


class SourceEncoders:
    """The VL and embedding encoders of a pipeline (built by their loaders on first use) and their cached rows."""

    def __init__(
        self,
        vl: Callable[[], VLEncoder] | None = None,
        embedding: Callable[[], EmbeddingEncoder] | None = None,
        fingerprints: dict[str, Callable[[], str]] | None = None,
    ) -> None:
        self._loaders = {"vl": vl, "embedding": embedding}
        self._encoders: dict[str, Any] = {}
        self._fingerprints = fingerprints or {}
        self._fingerprint_values: dict[str, str] = {}
        # (source, pass key, layer, token mode) -> SourceRows
        self._rows: dict[tuple[Any, ...], SourceRows] = {}
        self._reference: dict[tuple[str, int], Any] = {}

    @classmethod
    def from_settings(
        cls, vl: SourceModelSettings, embedding: SourceModelSettings, dit_model_path: str | None
    ) -> SourceEncoders:
        """Encoders of the configured checkpoints (unset: the tiny twins, allowed with the tiny Z-Image only: checked
        when a run first needs the source, before anything loads)."""

        def vl_loader() -> VLEncoder:
            from llm_dit.conditioning.vl_encoder import VLEncoder

            path = source_path("vl", vl.model_path, dit_model_path)
            return VLEncoder.from_pretrained(path, device=vl.device, torch_dtype=vl.torch_dtype)

        def embedding_loader() -> EmbeddingEncoder:
            from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder

            path = source_path("embedding", embedding.model_path, dit_model_path)
            return EmbeddingEncoder.from_pretrained(path, device=embedding.device, torch_dtype=embedding.torch_dtype)

        fingerprints = {
            "vl": lambda: source_fingerprint("vl", vl.model_path, dit_model_path),
            "embedding": lambda: source_fingerprint("embedding", embedding.model_path, dit_model_path),
        }
        return cls(vl_loader, embedding_loader, fingerprints)

    def encoder(self, source: str) -> Any:
        if source not in self._encoders:
            loader = self._loaders.get(source)
            if loader is None:
                raise LlmDitError(f"this pipeline has no {source} source; build it with from_pretrained or pass one")
            self._encoders[source] = loader()
        return self._encoders[source]

    def fingerprint(self, source: str) -> str | None:
        if source not in self._fingerprint_values:
            make = self._fingerprints.get(source)
            if make is None:
                return None
            self._fingerprint_values[source] = make()
        return self._fingerprint_values[source]

    def check(self, request: GenerationRequest) -> None:
        """Refuse a run whose source is not configured, before anything loads (the fingerprint resolves the path)."""
        source = request.conditioning.conditioning
        if source != "text":
            self.fingerprint(source)

    # -- encoding ------------------------------------------------------------------------------------

    def _wanted(self, request: GenerationRequest) -> dict[str, list[tuple[Any, ...]]]:
        """Per role, the row keys a request needs: ``(source, pass key, layer, token mode)``; none for a text run (one
        composed only for its fill mode)."""
        c = request.conditioning
        if c.conditioning == "text":
            return {}
        if c.conditioning == "vl":
            mode = c.vl_token_mode
            return {
                role: [("vl", key, c.vl_layer, mode) for key in keys]
                for role, keys in _vl_passes(c, request.prompt).items()
            }
        return {"main": [("embedding", _embedding_key(c, request.prompt), c.embedding_layer, None)]}

    def precompute(self, requests: Sequence[GenerationRequest], offload: bool = False) -> None:
        """Encode every source input of ``requests`` not yet cached: one forward per distinct input (``offload``:
        each source's encoder is freed once its inputs are done)."""
        todo: dict[tuple[str, Any], dict[tuple[Any, ...], None]] = {}
        for request in requests:
            self.check(request)
            for keys in self._wanted(request).values():
                for key in keys:
                    if key not in self._rows:
                        todo.setdefault((key[0], key[1]), {})[key] = None
        for source in ("vl", "embedding"):
            for (kind, pass_key), keys in todo.items():
                if kind != source:
                    continue
                if source == "vl":
                    self._encode_vl(pass_key, list(keys))
                else:
                    self._encode_embedding(pass_key, list(keys))
            if offload and source in self._encoders:
                self._encoders[source].unload()

    def _encode_vl(self, pass_key: tuple[tuple[str, ...], str, str | None], keys: list[tuple[Any, ...]]) -> None:
        from llm_dit.conditioning.vl_encoder import token_mode_rows
        from llm_dit.constants import IMAGE_PAD_ID
        from llm_dit.models.devices import module_device

        vl = self.encoder("vl")
        images, text, system_prompt = pass_key
        forward = vl.forward([_load_image(image) for image in images], text, system_prompt=system_prompt)
        ids = torch.tensor(forward.input_ids)
        facts = {
            "images": [image if not image.startswith(_NEUTRAL) else "mid-gray" for image in images],
            "image_sha256": [_image_sha256(image) for image in images],
            "text": text,
            "formatted_text": forward.formatted_text,
            "token_count": len(forward.input_ids),
            "image_token_counts": list(forward.image_token_counts),
            "encoder_device": module_device(vl.model),
        }
        for key in keys:
            _, _, layer, mode = key
            rows = vl.select(forward, layer, mode)
            selected = token_mode_rows(forward, mode)
            image_rows = (ids[selected] == IMAGE_PAD_ID).to(rows.device)
            self._rows[key] = SourceRows(
                rows, image_rows, {**facts, "layer": layer, "token_mode": mode, "rows": int(rows.shape[0])}
            )
        del forward

    def _encode_embedding(self, pass_key: tuple[str, str, str | None, bool], keys: list[tuple[Any, ...]]) -> None:
        from llm_dit.models.devices import module_device

        encoder = self.encoder("embedding")
        text, prompt_format, instruction, keep_eot = pass_key
        layers = [key[2] for key in keys]
        states = encoder.encode_layers(
            [text], layers, prompt_format=prompt_format, instruction=instruction, keep_eot=keep_eot
        )[0]
        facts = {
            "text": text,
            "formatted_text": encoder.format_prompt(text, prompt_format, instruction),
            "prompt_format": prompt_format,
            "instruction": instruction,
            "eot_kept": keep_eot,
            "encoder_device": module_device(encoder.model),
        }
        for key in keys:
            rows = states[key[2]]
            self._rows[key] = SourceRows(rows, None, {**facts, "layer": key[2], "rows": int(rows.shape[0])})

    def passes(self, request: GenerationRequest) -> dict[str, list[SourceRows]]:
        """The cached rows of each role of ``request`` (call :meth:`precompute` first)."""
        return {role: [self._rows[key] for key in keys] for role, keys in self._wanted(request).items()}

    def reference_stats(
        self, encoder: ZImageTextEncoder, fingerprint: str | None, settings: EncoderSettings, layer: int
    ) -> Any:
        """Qwen3-4B's per-dimension statistics at ``layer`` over the prompt library, from ``encoder`` under the run's
        template (cached on disk by the encoder's ``fingerprint``; None, an in-memory model: per process only)."""
        from llm_dit.conditioning import reference_stats

        template_key = reference_stats.template_key(settings)
        cache_key = (template_key, layer)
        if cache_key not in self._reference:

            def encode(texts: Sequence[str], layers: Sequence[int]) -> Any:
                return encoder.encode_layers(texts, layers, **reference_stats.template_overrides(settings))

            texts = reference_stats.reference_texts()
            if fingerprint is None:  # no identity to key a disk cache on: computed for this process only
                stats = reference_stats.compute_reference_stats(
                    encode, texts, [layer], encoder_fingerprint="<in-memory>", template_key=template_key
                )
            else:
                stats = reference_stats.load_or_compute(fingerprint, template_key, texts, [layer], encode)
            self._reference[cache_key] = stats[layer]
        return self._reference[cache_key]

    def devices_used(self, positive: Any) -> dict[str, str]:
        """``{"vl"|"embedding": "<device>/<dtype>"}`` of the source encoders that made ``positive``."""
        if not isinstance(positive, ComposedConditioning):
            return {}
        out: dict[str, str] = {}
        source = positive.record.get("conditioning_settings", {}).get("conditioning")
        for passes in positive.record.get("source_passes", {}).values():
            for facts in passes:
                if facts.get("encoder_device") and source in ("vl", "embedding"):
                    out[source] = facts["encoder_device"]
        return out

    def unload(self) -> None:
        for encoder in self._encoders.values():
            encoder.unload()

    def clear(self) -> None:
        self._rows.clear()

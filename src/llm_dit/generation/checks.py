"""Generation requests checked against a checkpoint before any model loads, without torch.

:class:`RequestChecker` does everything :meth:`LlmDitPipeline.check <llm_dit.generation.pipeline.LlmDitPipeline.check>`
does (the pipeline delegates to it): width and height against the checkpoint's size multiple, the sigma schedule,
each prompt and negative prompt through the token caps and layer range (:mod:`llm_dit.conditioning.tokenization`),
and the shape of precomputed caption features. Planning, dry runs and every rejection of bad input build one
from the checkpoint's configs and its cached tokenizer (:meth:`RequestChecker.for_checkpoint`), importing neither
torch, transformers nor diffusers. :func:`resolved_numerics` names the devices and dtypes a run uses (they enter
run ids) with the same light answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_dit.conditioning.tokenization import PromptTokenizer
from llm_dit.constants import SHIFT_FROM_CALLER
from llm_dit.errors import LlmDitError
from llm_dit.generation.request import GenerationRequest, encoding_texts
from llm_dit.generation.schedule import check_schedule
from llm_dit.models import checkpoint, devices

if TYPE_CHECKING:
    from llm_dit.config import EncoderSettings, Settings
    from llm_dit.models.checkpoint import CheckpointInfo

__all__ = ["RequestChecker", "request_shift", "resolved_numerics"]


def request_shift(request: GenerationRequest, info: CheckpointInfo | None) -> tuple[float | None, str | None]:
    """A request's shift and where it came from: its own (the source its caller names), else the checkpoint's
    scheduler shift (``checkpoint.default_shift``); (None, None) with explicit sigmas, which are used verbatim."""
    gen = request.generation
    if gen.sigmas is not None:
        return None, None
    if gen.shift is not None:
        return gen.shift, request.shift_source or SHIFT_FROM_CALLER
    return checkpoint.default_shift(info)


class RequestChecker:
    """What a checkpoint accepts, checked request by request: no weights, no torch.

    ``prompts``: the tokenization and caps of the encoder (the pipeline passes its encoder's; the light paths one
    over the checkpoint's cached tokenizer). ``size_multiple`` and ``cap_feat_dim`` come from the checkpoint's
    configs (``cap_feat_dim`` None: the width of precomputed features is not checked); ``info`` gives the
    default shift (None: the built-in one).
    """

    def __init__(
        self,
        prompts: PromptTokenizer,
        *,
        size_multiple: int,
        cap_feat_dim: int | None,
        info: CheckpointInfo | None = None,
    ) -> None:
        self.prompts = prompts
        self.size_multiple = size_multiple
        self.cap_feat_dim = cap_feat_dim
        self.info = info

    @classmethod
    def for_checkpoint(cls, info: CheckpointInfo, encoder: EncoderSettings) -> RequestChecker:
        """The checks of a validated checkpoint under the given encoder settings (its tokenizer loads on first
        use, through the disk cache)."""
        return cls(
            PromptTokenizer.for_checkpoint(info, encoder),
            size_multiple=info.size_multiple,
            cap_feat_dim=info.cap_feat_dim,
            info=info,
        )

    @classmethod
    def for_settings(cls, settings: Settings) -> RequestChecker:
        """The checks of ``settings.model_path`` (validated now) under ``settings.encoder``."""
        info = checkpoint.validate_checkpoint(checkpoint.resolve_model_path(settings.model_path))
        return cls.for_checkpoint(info, settings.encoder)

    def check(self, requests: Sequence[GenerationRequest]) -> None:
        """Validate each request (LlmDitError naming the problem)."""
        for request in requests:
            gen = request.generation
            for name, value in (("width", gen.width), ("height", gen.height)):
                if value % self.size_multiple:
                    raise LlmDitError(f"{name} {value} is not a multiple of {self.size_multiple} for this checkpoint")
            shift, _ = request_shift(request, self.info)
            check_schedule(gen.steps, shift, gen.sigmas)
            for text in encoding_texts(request):  # what the pipeline encodes
                self.prompts.tokenize(text, **request.encoder)
            self._check_conditioning(request)
            for name, emb in (("embeddings", request.embeddings), ("negative_embeddings", request.negative_embeddings)):
                if emb is not None:
                    # Caption features are torch tensors, so torch is loaded already whenever this runs.
                    from llm_dit.conditioning.embeddings import check_features

                    check_features(emb, name, width=self.cap_feat_dim, max_rows=self.prompts.max_caption_tokens)

    def _check_conditioning(self, request: GenerationRequest) -> None:
        """Image inputs exist and are images; a fill target fits under the caption cap."""
        from llm_dit.files import check_input_images

        c = request.conditioning
        check_input_images(c)
        if c.target_length is not None:
            cap = self.prompts.resolve(**request.encoder).max_text_tokens
            if c.target_length > cap:
                raise LlmDitError(
                    f"target_length {c.target_length} is above the caption cap of {cap} (max_text_tokens); "
                    "lower target_length or raise max_text_tokens"
                )


def resolved_numerics(settings: Settings) -> dict[str, str]:
    """The devices and dtypes a run uses, ``{"encoder"|"dit"|"vae": "<device type>/torch.<dtype>"}``: they change
    pixels, so they enter run ids. What the pipeline resolves (``devices.resolve_device``/``resolve_dtype``), named
    without torch where the answer is known without it (``devices.numerics_label``); an unusable device is refused
    here, naming its flag."""
    enc, pipe = settings.encoder, settings.pipeline
    return {
        "encoder": devices.numerics_label(enc.device, enc.torch_dtype, "encoder.device"),
        "dit": devices.numerics_label(pipe.device, pipe.torch_dtype, "pipeline.device"),
        "vae": devices.numerics_label(
            pipe.vae_device or pipe.device,
            pipe.vae_dtype or pipe.torch_dtype,
            "pipeline.vae_device" if pipe.vae_device else "pipeline.device",
        ),
    }

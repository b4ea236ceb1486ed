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
from llm_dit.generation.acceleration import resolve as resolve_acceleration
from llm_dit.generation.request import GenerationRequest, encoding_texts
from llm_dit.generation.schedule import check_schedule, img2img_start
from llm_dit.models import checkpoint, devices

if TYPE_CHECKING:
    from llm_dit.config import EncoderSettings, Settings
    from llm_dit.models.checkpoint import CheckpointInfo
    from llm_dit.models.vl import VLCheckpointInfo

__all__ = ["RequestChecker", "predicted_vl_rows", "request_shift", "resolved_numerics"]


def request_shift(request: GenerationRequest, info: CheckpointInfo | None) -> tuple[float | None, str | None]:
    """A request's shift and where it came from: its own (the source its caller names), else the checkpoint's
    scheduler shift (``checkpoint.default_shift``); (None, None) with explicit sigmas, which are used verbatim."""
    gen = request.generation
    if gen.sigmas is not None:
        return None, None
    if gen.shift is not None:
        return gen.shift, request.shift_source or SHIFT_FROM_CALLER
    return checkpoint.default_shift(info)


def predicted_vl_rows(
    request: GenerationRequest, prompts: PromptTokenizer, info: VLCheckpointInfo | None = None
) -> tuple[int, int] | None:
    """``(rows, image tokens)`` of the features a VL source alone gives the DiT (``vl_alpha`` 1, one pass, no style
    delta), before the caption cap, from the images' headers, the processor's rule (``info`` None: Qwen3-VL's
    numbers) and the tokenizer: no model. None for other runs (a mix has the text's length, at most the cap)."""
    from pathlib import Path

    from PIL import Image

    from llm_dit.models.vl import vl_chat_text, vl_image_token_count

    c = request.conditioning
    if c.conditioning != "vl" or c.source_alpha < 1.0 or c.vl_image is None:
        return None
    if c.style_image is not None or c.vl_image_weights is not None or c.intra_vl_ratio is not None:
        return None
    counts = []
    for path in c.vl_image:
        with Image.open(Path(path).expanduser()) as image:
            counts.append(vl_image_token_count(*image.size, info))
    text = c.vl_text if c.vl_text is not None else (request.prompt or "")
    ids, _ = prompts.encode(vl_chat_text(len(counts), text, c.vl_system_prompt))
    total = len(ids) + sum(n - 1 for n in counts)  # each <|image_pad|> expands to its image's tokens
    spans = sum(n + 2 for n in counts)  # with <|vision_start|> and <|vision_end|>
    rows = {"full": total, "image_only": spans, "image_no_markers": sum(counts), "text_only": total - spans}
    return rows[c.vl_token_mode], sum(counts)


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
            steps = check_schedule(gen.steps, shift, gen.sigmas)
            self._check_steps(request, steps - img2img_start(steps, gen.resolved_strength))
            for text in encoding_texts(request):  # what the pipeline encodes
                self.prompts.tokenize(text, **request.encoder)
            self._check_conditioning(request)
            for name, emb in (("embeddings", request.embeddings), ("negative_embeddings", request.negative_embeddings)):
                if emb is not None:
                    # Caption features are torch tensors, so torch is loaded already whenever this runs.
                    from llm_dit.conditioning.embeddings import check_features

                    check_features(emb, name, width=self.cap_feat_dim, max_rows=self.prompts.max_caption_tokens)

    @staticmethod
    def _check_steps(request: GenerationRequest, steps: int) -> None:
        """Per-step conditioning that reaches a step of the ``steps`` the run takes (after img2img's strength)."""
        c = request.conditioning
        if c.prompt_switch_step is not None and c.prompt_switch_step >= steps:
            raise LlmDitError(
                f"prompt_switch_step {c.prompt_switch_step} is not below the run's {steps} steps: prompt_switch "
                f"would condition no step; use a step in 1..{steps - 1}"
            )
        schedule = c.alpha_schedule
        if schedule is not None and schedule.at_step is not None and schedule.at_step >= steps:
            raise LlmDitError(
                f"vl_alpha_schedule {c.vl_alpha_schedule} switches at step {schedule.at_step}, not below the run's "
                f"{steps} steps: every step would get {schedule.start}; use a step in 1..{steps - 1} or vl_alpha"
            )

    def _check_conditioning(self, request: GenerationRequest) -> None:
        """Image inputs exist and are images; a fill target fits under the caption cap; a VL source alone fits under it
        when no long-prompt mode may shorten it (the rows predicted from the image headers and the tokens)."""
        from llm_dit.files import check_input_images

        c = request.conditioning
        check_input_images(c)
        check_input_images(request.generation)
        resolved = self.prompts.resolve(**request.encoder)
        cap = resolved.max_text_tokens
        if resolved.long_prompt_mode == "none":
            predicted = predicted_vl_rows(request, self.prompts)
            if predicted is not None and predicted[0] > cap:
                rows, image_tokens = predicted
                raise LlmDitError(
                    f"the VL input is {rows} rows ({image_tokens} image tokens, vl_token_mode {c.vl_token_mode}), "
                    f"over the caption cap of {cap}, and long_prompt_mode is none; choose a long_prompt_mode "
                    "(truncate, interpolate, pool, attention_pool), a smaller vl_image or another vl_token_mode"
                )
        if c.target_length is not None and c.target_length > cap:
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
    dit = devices.numerics_label(pipe.device, pipe.torch_dtype, "pipeline.device")
    resolve_acceleration(pipe, dit.partition("/")[0])  # refuses FP8 or a CUDA attention kernel off CUDA, now
    if pipe.fp8 != "none":  # FP8 linears change images well beyond bf16 rounding: another numerics, another run
        dit += f"+fp8_{pipe.fp8}"
    vae = devices.numerics_label(
        pipe.vae_device or pipe.device,
        pipe.vae_dtype or pipe.torch_dtype,
        "pipeline.vae_device" if pipe.vae_device else "pipeline.device",
    )
    if pipe.vae_tiling:  # tiles larger than one change pixels (per-tile group norms)
        vae += "+tiled"
    return {"encoder": devices.numerics_label(enc.device, enc.torch_dtype, "encoder.device"), "dit": dit, "vae": vae}

"""Generation: prompts (or precomputed embeddings) -> images with their records.

``LlmDitPipeline`` ties the layers together: it checks a whole batch of requests before any weights load,
encodes each distinct (prompt, conditioning settings) once, groups samples that can share DiT forwards
(same size, step count and refiner mode; any prompt, seed, shift or guidance) and runs the loop in
``sampler.py`` over diffusers' own transformer and VAE.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image
from torch import nn

from llm_dit import __version__
from llm_dit.conditioning.compose import ComposedConditioning, compose
from llm_dit.conditioning.text_encoder import EncodedPrompt, ZImageTextEncoder, layer_agnostic_key
from llm_dit.config import (
    EncoderSettings,
    PipelineSettings,
    Settings,
    SourceModelSettings,
    build_section,
    conditioning_params,
)
from llm_dit.constants import HARD_MAX_TEXT_TOKENS, SIZE_MULTIPLE
from llm_dit.errors import LlmDitError
from llm_dit.files import ensure_writable
from llm_dit.generation.acceleration import Acceleration, accelerate
from llm_dit.generation.batching import batches
from llm_dit.generation.checks import RequestChecker, request_shift
from llm_dit.generation.image import decode_latents, encode_image, load_init_image, needs_tiles, save_png, to_pil
from llm_dit.generation.record import package_versions, parameters_line, tensor_fingerprint, utc_now
from llm_dit.generation.request import (
    GenerationRequest,
    encoding_texts,
    needs_text_features,
    sampling_group,
    step_variants,
)
from llm_dit.generation.sampler import Caption, Guidance, denoise, initial_noise, noised_latents
from llm_dit.generation.schedule import check_schedule, img2img_start, resolve_sigmas
from llm_dit.generation.sources import SourceEncoders
from llm_dit.models import checkpoint, devices
from llm_dit.models.devices import module_device

ProgressCallback = Callable[[int, int], None]  # (DiT forwards done, total)
Features = EncodedPrompt | ComposedConditioning | torch.Tensor  # one sample's caption features, as made


@dataclass
class StepFeatures:
    """The caption features of a run whose conditioning changes over the steps: one per step (equal steps share one
    object, made once) and what each step used, for the record."""

    steps: list[Features]
    schedule: list[dict[str, Any]] = field(default_factory=list)


RunFeatures = Features | StepFeatures

_ENCODER_RECORD_KEYS = (
    "system_prompt",
    "think_block",
    "hidden_layer",
    "layer_weights",
    "long_prompt_mode",
    "max_text_tokens",
    "padding",
)


@dataclass
class GenerationResult:
    """A generated image (``[3, H, W]`` fp32 in [0, 1]) and its full record."""

    image: torch.Tensor
    record: dict[str, Any]
    tag: Any = None

    def pil(self) -> Image.Image:
        return to_pil(self.image)

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a PNG carrying the record (text chunk ``llm_dit``) and an A1111 ``parameters`` line."""
        path = ensure_writable(path, overwrite)
        return save_png(self.pil(), path, self.record, parameters_line(self.record))


def _config_of(module: nn.Module) -> Mapping[str, Any]:
    """A module's ``config`` as a mapping (diffusers' FrozenDict is one; a namespace-like config is read by vars)."""
    config = module.config
    return config if isinstance(config, Mapping) else vars(config)


class _Lazy:
    """A component loaded on first use, so bad input fails before any weights are read."""

    def __init__(self, value: nn.Module | None = None, loader: Callable[[], nn.Module] | None = None) -> None:
        self._value, self._loader = value, loader

    def get(self) -> nn.Module:
        if self._value is None:
            assert self._loader is not None
            self._value = self._loader()
        return self._value


class LlmDitPipeline:
    """Z-Image generation with every conditioning and sampling knob exposed."""

    def __init__(
        self,
        encoder: ZImageTextEncoder,
        transformer: nn.Module | Callable[[], nn.Module],
        vae: nn.Module | Callable[[], nn.Module],
        *,
        info: checkpoint.CheckpointInfo | None = None,
        model_path: str = "<in-memory>",
        fingerprint: str | None = None,
        pipeline_settings: PipelineSettings | None = None,
        max_batch_size: int = 8,
        sources: SourceEncoders | None = None,
    ) -> None:
        self.encoder = encoder
        # The other conditioning sources (Qwen3-VL, Qwen3-Embedding), loaded on first use.
        self.sources = sources or SourceEncoders()
        # In-memory modules (from_components: perhaps also a diffusers pipeline's) are left as they are unless the
        # settings ask for speed options; a checkpoint's DiT gets the settings' (auto: compiled on CUDA).
        self.pipeline_settings = pipeline_settings or PipelineSettings(compile="none", attention_backend="native")
        self.acceleration: Acceleration | None = None  # what the loaded DiT runs with (set when it loads)

        def load_transformer() -> nn.Module:
            module = transformer if isinstance(transformer, nn.Module) else transformer()
            self.acceleration = accelerate(module, self.pipeline_settings)
            return module

        self._transformer = _Lazy(loader=load_transformer)
        self._vae = _Lazy(vae) if isinstance(vae, nn.Module) else _Lazy(loader=vae)
        self.info = info
        self.model_path = model_path
        self._fingerprint = fingerprint
        if max_batch_size < 1:
            raise LlmDitError(f"max_batch_size must be >= 1, got {max_batch_size}")
        self.max_batch_size = max_batch_size
        # (text, encoder settings JSON) -> EncodedPrompt: each distinct formatted prompt is encoded once.
        self._cache: dict[tuple[str, str], EncodedPrompt] = {}
        self._init_pixels: dict[tuple[str, int, int], torch.Tensor] = {}  # (path, width, height) -> [1, 3, H, W]
        # What the DiT and VAE accept: from the checkpoint's configs (from_components reads the modules' own);
        # cap_feat_dim None (no configs known) leaves the width of precomputed embeddings unchecked.
        self.size_multiple = info.size_multiple if info is not None else SIZE_MULTIPLE
        self.cap_feat_dim: int | None = info.cap_feat_dim if info is not None else None

    # -- construction ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        model_path: str | Path | None = None,
        *,
        encoder: EncoderSettings | dict[str, Any] | None = None,
        pipeline: PipelineSettings | dict[str, Any] | None = None,
        max_batch_size: int = 8,
        vl: SourceModelSettings | None = None,
        embedding: SourceModelSettings | None = None,
    ) -> LlmDitPipeline:
        """A pipeline over a local checkpoint in diffusers layout (None or "tiny": the built-in tiny model).

        The directory is validated now; weights load on first use. ``encoder`` and ``pipeline`` hold
        devices, dtypes and default conditioning (see :mod:`llm_dit.config`); ``vl`` and ``embedding`` the checkpoints
        of the other sources (unset: their tiny twins, with the tiny Z-Image only).
        """
        enc = encoder if isinstance(encoder, EncoderSettings) else build_section(EncoderSettings, encoder or {})
        pipe = pipeline if isinstance(pipeline, PipelineSettings) else build_section(PipelineSettings, pipeline or {})
        path = checkpoint.resolve_model_path(model_path)
        info = checkpoint.validate_checkpoint(path)
        dit_device = devices.resolve_device(pipe.device)
        dit_dtype = devices.resolve_dtype(pipe.torch_dtype, dit_device)
        vae_device = devices.resolve_device(pipe.vae_device or pipe.device)
        vae_dtype = devices.resolve_dtype(pipe.vae_dtype or pipe.torch_dtype, vae_device)
        text_encoder = ZImageTextEncoder.from_pretrained(path, **enc.model_dump())
        return cls(
            text_encoder,
            lambda: checkpoint.load_transformer(path, dit_device, dit_dtype),
            lambda: checkpoint.load_vae(path, vae_device, vae_dtype),
            info=info,
            model_path=str(model_path) if model_path not in (None, "tiny") else "tiny",
            pipeline_settings=pipe,
            max_batch_size=max_batch_size,
            sources=SourceEncoders.from_settings(
                vl or SourceModelSettings(),
                embedding or SourceModelSettings(),
                None if model_path in (None, "tiny") else str(model_path),
            ),
        )

    @classmethod
    def from_components(
        cls,
        tokenizer: Any,
        text_encoder: nn.Module,
        transformer: nn.Module,
        vae: nn.Module,
        *,
        model_path: str = "<in-memory>",
        max_batch_size: int = 8,
        pipeline: PipelineSettings | None = None,
        **encoder_settings: Any,
    ) -> LlmDitPipeline:
        """A pipeline over components already in memory (e.g. the same objects a diffusers pipeline holds).

        Caption cap, size multiple and caption width come from the modules' configs, by the same rules as for
        a checkpoint on disk (:class:`llm_dit.models.checkpoint.CheckpointInfo`). ``pipeline``: speed settings to
        apply to the DiT in place when it is first used (None: none, the modules run as given).
        """
        dit_config, vae_config = _config_of(transformer), _config_of(vae)
        cap = checkpoint.dit_max_caption_tokens(dit_config)
        encoder = ZImageTextEncoder(
            tokenizer, text_encoder, max_caption_tokens=min(cap, HARD_MAX_TEXT_TOKENS), **encoder_settings
        )
        pipe = cls(
            encoder, transformer, vae, model_path=model_path, max_batch_size=max_batch_size, pipeline_settings=pipeline
        )
        pipe.size_multiple = checkpoint.vae_size_multiple(vae_config)
        pipe.cap_feat_dim = checkpoint.dit_cap_feat_dim(dit_config)
        return pipe

    @classmethod
    def from_settings(cls, settings: Settings, max_batch_size: int = 8) -> LlmDitPipeline:
        return cls.from_pretrained(
            settings.model_path,
            encoder=settings.encoder,
            pipeline=settings.pipeline,
            max_batch_size=max_batch_size,
            vl=settings.vl,
            embedding=settings.embedding,
        )

    @property
    def transformer(self) -> nn.Module:
        return self._transformer.get()

    @property
    def vae(self) -> nn.Module:
        return self._vae.get()

    @property
    def fingerprint(self) -> str | None:
        if self._fingerprint is None and self.info is not None:
            self._fingerprint = checkpoint.fingerprint(self.info.path)
        return self._fingerprint

    # -- checking -------------------------------------------------------------------------------------

    def check(self, requests: Sequence[GenerationRequest]) -> None:
        """Validate requests against the checkpoint without loading any weights (tokenizer only); the same checks
        as the light paths' (:meth:`request_checker`)."""
        self._check(requests)

    def _check(self, requests: Sequence[GenerationRequest]) -> list[torch.Tensor]:
        """:meth:`check`, returning the sigmas each request runs: its resolved schedule, from the step image-to-image
        starts at (``strength``) on."""
        self.request_checker().check(requests)
        out = []
        for r in requests:
            sigmas = resolve_sigmas(r.generation.steps, self._shift(r)[0], r.generation.sigmas)
            out.append(sigmas[img2img_start(len(sigmas) - 1, r.generation.resolved_strength) :])
        return out

    def request_checker(self) -> RequestChecker:
        """This pipeline's checks (:class:`~llm_dit.generation.checks.RequestChecker`, torch-free): its encoder's
        tokenization and caps, its size multiple, caption width and checkpoint."""
        return RequestChecker(
            self.encoder.prompts, size_multiple=self.size_multiple, cap_feat_dim=self.cap_feat_dim, info=self.info
        )

    # -- generation -----------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str | None = None,
        *,
        embeddings: torch.Tensor | None = None,
        negative_embeddings: torch.Tensor | None = None,
        progress: ProgressCallback | None = None,
        **params: Any,
    ) -> GenerationResult:
        """One image. ``params`` are any :class:`GenerationSettings` / :class:`EncoderSettings` fields."""
        request = GenerationRequest.build(
            prompt, embeddings=embeddings, negative_embeddings=negative_embeddings, **params
        )
        return self.generate_batch([request], progress=progress)[0]

    def generate_batch(
        self, requests: Sequence[GenerationRequest], progress: ProgressCallback | None = None
    ) -> list[GenerationResult]:
        """Many images; samples that can share a DiT forward are batched (up to ``max_batch_size``)."""
        requests = list(requests)
        schedules = self._check(requests)
        positives, negatives = self._run_features(requests, schedules)

        chunks = batches(
            range(len(requests)), lambda index: sampling_group(requests[index], schedules[index]), self.max_batch_size
        )

        total = sum(len(sigmas) - 1 for sigmas in schedules)
        done = 0
        results: list[GenerationResult | None] = [None] * len(requests)
        for chunk in chunks:
            width, height, _, refiner = sampling_group(requests[chunk[0]], schedules[chunk[0]])
            if torch.cuda.is_available():  # the peak of this batch alone
                for index in range(torch.cuda.device_count()):
                    torch.cuda.reset_peak_memory_stats(index)
            t0 = time.perf_counter()

            def on_step(i: int, steps: int, n: int = len(chunk)) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            images = self._sample(
                [requests[i] for i in chunk],
                torch.stack([schedules[i] for i in chunk]),
                [positives[i] for i in chunk],
                [negatives[i] for i in chunk],
                width,
                height,
                refiner,
                on_step,
            )
            # _sample's copy to the CPU waits for the devices' work: the clock stops after the images exist.
            batch_seconds = time.perf_counter() - t0
            cuda = {p.device for m in (self.transformer, self.vae) for p in m.parameters() if p.device.type == "cuda"}
            # CUDA: max allocated over the batch, the largest of its devices; a CPU has no such number (None).
            peak = max((torch.cuda.max_memory_allocated(d) for d in cuda), default=None)
            for k, index in enumerate(chunk):
                record = self._record(requests[index], positives[index], negatives[index], schedules[index])
                record["batch_seconds"] = round(batch_seconds, 6)
                record["batch_size"] = len(chunk)
                record["batch_position"] = k
                # What one image cost in this batch: it moves with the batch size, hence the name.
                record["seconds_per_image_batched"] = round(batch_seconds / len(chunk), 6)
                record["peak_memory_bytes"] = peak
                results[index] = GenerationResult(images[k], record, requests[index].tag)
        assert all(r is not None for r in results)  # the batches partition the requests
        return cast(list[GenerationResult], results)

    def _run_features(
        self, requests: list[GenerationRequest], schedules: Sequence[torch.Tensor]
    ) -> tuple[list[RunFeatures], list[Features | None]]:
        """Caption features of every request, as :meth:`_encode_all` makes them; a request whose conditioning changes
        over the steps gets one entry per step (:func:`~llm_dit.generation.request.step_variants`), each distinct
        step conditioning of the whole batch encoded and composed once."""
        variants = [step_variants(r, s[:-1].tolist()) for r, s in zip(requests, schedules, strict=True)]
        distinct: dict[str, GenerationRequest] = {}
        for steps in variants:
            for variant in steps or []:
                distinct.setdefault(_variant_key(variant), variant)
        plain = [r for r, steps in zip(requests, variants, strict=True) if steps is None]
        made, made_negatives = self._encode_all(plain + list(distinct.values()))
        by_key = dict(zip(distinct, made[len(plain) :], strict=True))
        negative_by_key = dict(zip(distinct, made_negatives[len(plain) :], strict=True))
        positives: list[RunFeatures] = []
        negatives: list[Features | None] = []
        done = 0
        for request, steps, sigmas in zip(requests, variants, schedules, strict=True):
            if steps is None:
                positives.append(made[done])
                negatives.append(made_negatives[done])
                done += 1
                continue
            keys = [_variant_key(v) for v in steps]
            features = [by_key[k] for k in keys]
            schedule = [
                {
                    "step": i,
                    "sigma": round(float(sigma), 8),
                    "prompt": v.prompt,
                    "vl_alpha": v.conditioning.vl_alpha if request.conditioning.vl_alpha_schedule else None,
                    "embedding_length": int(_tensor_of(f).shape[0]),
                }
                for i, (v, f, sigma) in enumerate(zip(steps, features, sigmas[:-1].tolist(), strict=True))
            ]
            positives.append(StepFeatures(features, schedule))
            negatives.append(negative_by_key[keys[0]])  # the negative prompt does not change over the steps
        return positives, negatives

    def _encode_all(self, requests: list[GenerationRequest]) -> tuple[list[Features], list[Features | None]]:
        """Caption features of every request: precomputed ones as given, texts through the encoding cache, other
        sources composed with the text features (:func:`llm_dit.conditioning.compose.compose`)."""
        self.precompute_encodings(requests)
        positives: list[Any] = [None] * len(requests)
        negatives: list[Any] = [None] * len(requests)
        for index, (request, settings) in enumerate(zip(requests, self._encoder_settings(requests), strict=True)):
            text = (
                self._cache.get((request.prompt, settings.model_dump_json())) if needs_text_features(request) else None
            )
            if request.embeddings is not None and request.conditioning.fill_mode is None:
                positives[index] = request.embeddings
            elif request.embeddings is not None:  # precomputed features brought to target_length
                positives[index] = compose(
                    request.conditioning,
                    text=request.embeddings,
                    passes={},
                    source_layer=None,
                    references=None,
                    # the cap precomputed features are checked against (check_features), so none is shortened
                    max_rows=self.encoder.max_caption_tokens,
                    long_prompt_mode=settings.long_prompt_mode,
                )
                positives[index].text = request.embeddings
            elif request.conditioning.conditioning == "text" and request.conditioning.fill_mode is None:
                positives[index] = text
            else:
                positives[index] = self._compose(request, settings, text)
            if request.generation.guidance_scale > 0:
                if request.negative_embeddings is not None:
                    negatives[index] = request.negative_embeddings
                else:
                    negatives[index] = self._cache[(request.generation.negative_prompt, settings.model_dump_json())]
        return positives, negatives

    def caption_features(self, requests: Sequence[GenerationRequest]) -> list[Features]:
        """The caption features each request would give the DiT (text, source or composed; no sampling): for
        statistics and ``encode``. Checks the requests first, as :meth:`generate_batch` does. Conditioning that changes
        over the steps gives its first step's features."""
        requests = list(requests)
        self._check(requests)
        return self._encode_all(requests)[0]

    def _compose(
        self, request: GenerationRequest, settings: EncoderSettings, text: EncodedPrompt | None
    ) -> ComposedConditioning:
        c = request.conditioning
        composed = compose(
            c,
            text=None if text is None else text.embeddings,
            passes=self.sources.passes(request),
            source_layer=c.source_layer,
            references=lambda at: self.sources.reference_stats(self.encoder, self.fingerprint, settings, at),
            max_rows=self.encoder.resolve(**request.encoder).max_text_tokens,
            long_prompt_mode=settings.long_prompt_mode,
        )
        composed.text = text
        return composed

    def precompute_encodings(self, requests: Sequence[GenerationRequest], offload: bool = False) -> None:
        """Encode every distinct (text, encoder settings) of ``requests`` not yet cached.

        Texts whose settings differ only in the layer choice share one encoder forward (all layers at once),
        so a hidden-layer sweep encodes each prompt once; each distinct VL or embedding input is encoded once too.
        Results stay cached for later batches; a runner can call this for a whole experiment, then
        :meth:`offload_encoder` before sampling. ``offload``: free each encoder as soon as its inputs are done.
        """
        groups: dict[str, tuple[dict[str, EncoderSettings], dict[str, None]]] = {}
        for request, settings in zip(requests, self._encoder_settings(requests), strict=True):
            key = settings.model_dump_json()
            for text in encoding_texts(request):
                if (text, key) not in self._cache:
                    variants, wanted = groups.setdefault(layer_agnostic_key(settings), ({}, {}))
                    variants[key] = settings
                    wanted[text] = None
        for variants, wanted in groups.values():
            texts = list(wanted)
            results = self.encoder.encode_variants(texts, list(variants.values()))
            for key, encoded in zip(variants, results, strict=True):
                for text, item in zip(texts, encoded, strict=True):
                    self._cache[(text, key)] = item
        # Qwen3-4B's reference statistics that masking and normalisation need, while the text encoder is loaded
        # (composition, which reads them, runs after the encoders are freed).
        for request, settings in zip(requests, self._encoder_settings(requests), strict=True):
            c = request.conditioning
            if c.needs_reference_stats:
                assert c.source_layer is not None
                self.sources.reference_stats(self.encoder, self.fingerprint, settings, c.source_layer)
        # Each distinct source input once (one VL forward serves every layer and token mode of it). With ``offload``
        # each encoder is freed before the next loads: the peak is the largest encoder, not their sum.
        if offload:
            self.encoder.unload()
        self.sources.precompute([r for r in requests if r.conditioning.conditioning != "text"], offload=offload)

    def _encoder_settings(self, requests: Sequence[GenerationRequest]) -> list[EncoderSettings]:
        return [self.encoder.resolve(**request.encoder) for request in requests]

    def clear_encoding_cache(self) -> None:
        self._cache.clear()
        self.sources.clear()

    def offload_encoder(self) -> None:
        """Free every encoder's weights (text, VL, embedding; cached features stay) to cut peak memory while
        sampling."""
        self.encoder.unload()
        self.sources.unload()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _sample(
        self,
        requests: list[GenerationRequest],
        sigmas: torch.Tensor,
        positives: list[RunFeatures],
        negatives: list[Features | None],
        width: int,
        height: int,
        refiner: str,
        on_step: Callable[[int, int], None],
    ) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` (CPU) of one batch sharing size, step count (``sigmas`` is ``[B, steps + 1]``)
        and refiner mode."""
        transformer = self.transformer
        param = next(transformer.parameters())
        device, dtype = param.device, param.dtype
        scale = self.size_multiple // 2  # VAE downsampling factor
        channels = int(transformer.config.in_channels)
        shape = (channels, height // scale, width // scale)
        latents = torch.cat(
            [self._start_latents(r, sigmas[k], shape, device, dtype) for k, r in enumerate(requests)], dim=0
        )
        moved: dict[int, torch.Tensor] = {}  # id(features) -> on the DiT: a tensor shared by steps moves once

        def features(item: Features | None) -> torch.Tensor | None:
            if item is None:
                return None
            if id(item) not in moved:
                moved[id(item)] = _tensor_of(item).to(device=device, dtype=dtype)
            return moved[id(item)]

        def caption(item: RunFeatures) -> Caption:
            if isinstance(item, StepFeatures):
                return [features(f) for f in item.steps]  # type: ignore[misc]
            return features(item)  # type: ignore[return-value]

        latents = denoise(
            transformer,
            latents,
            sigmas,
            [caption(p) for p in positives],
            [features(n) for n in negatives],
            [
                Guidance(g.guidance_scale, g.cfg_normalization, g.cfg_truncation)
                for g in (r.generation for r in requests)
            ],
            refiner=refiner,
            on_step=on_step,
        )
        # One host sync per batch, after the loop: a NaN or inf latent would decode to a black or garbage PNG.
        if not bool(torch.isfinite(latents).all()):
            fp8 = self.acceleration.fp8 if self.acceleration is not None else "none"
            cause = f' with fp8 = {fp8!r} (try fp8 = "none" or the other FP8 mode)' if fp8 != "none" else ""
            raise LlmDitError(
                f"the DiT produced non-finite latents{cause} for {len(requests)} image(s) of {width}x{height}; "
                "nothing was decoded or written"
            )
        return decode_latents(self.vae, latents, tiled=self.pipeline_settings.vae_tiling).cpu()

    def _start_latents(
        self,
        request: GenerationRequest,
        sigmas: torch.Tensor,
        shape: tuple[int, int, int],
        device: torch.device,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """One sample's fp32 start latents ``[1, C, h, w]``: seeded noise, or for image-to-image the init image's
        latents noised to the run's first sigma.

        Image-to-image follows diffusers' ``ZImageImg2ImgPipeline`` draw for draw: one generator per sample seeded
        with the seed; the VAE posterior sample draws from it first, then the noise (in the DiT's dtype, as diffusers
        draws it in the caption features' dtype); ``scale_noise`` mixes them at the sigma of the first step taken.
        """
        gen = request.generation
        if gen.init_image is None:
            return initial_noise([gen.seed], *shape, device)
        generator = torch.Generator(device).manual_seed(int(gen.seed))
        key = (str(gen.init_image), gen.width, gen.height)
        if key not in self._init_pixels:
            self._init_pixels.clear()  # one init image at a time is what sweeps use; don't hold many
            self._init_pixels[key] = load_init_image(gen.init_image, gen.width, gen.height, self.size_multiple)
        image_latents = encode_image(self.vae, self._init_pixels[key], generator)
        noise = torch.randn((1, *shape), generator=generator, device=device, dtype=dtype)
        start = noised_latents(image_latents, noise.to(image_latents.device), sigmas[:1])
        return start.to(device=device, dtype=torch.float32)

    def _shift(self, request: GenerationRequest) -> tuple[float | None, str | None]:
        """A request's shift and its source under this pipeline's checkpoint (see ``checks.request_shift``)."""
        return request_shift(request, self.info)

    def _record(
        self,
        request: GenerationRequest,
        features: RunFeatures,
        negative: Features | None,
        sigmas: torch.Tensor,
    ) -> dict[str, Any]:
        # Conditioning that changes over the steps: the first step's features describe the source; the schedule
        # lists every step's.
        positive = features.steps[0] if isinstance(features, StepFeatures) else features
        gen = request.generation
        enc = self.encoder.resolve(**request.encoder)
        shift, shift_source = self._shift(request)
        cfg = gen.guidance_scale > 0  # the CFG refinements are inert without CFG: recorded as None then
        record: dict[str, Any] = {
            "prompt": request.prompt,
            "system_prompt": enc.system_prompt,
            "think_block": enc.think_block,
            "hidden_layer": None if enc.layer_weights else enc.hidden_layer,
            "layer_weights": {str(k): v for k, v in enc.layer_weights.items()} if enc.layer_weights else None,
            "long_prompt_mode": enc.long_prompt_mode,
            "max_text_tokens": enc.max_text_tokens,
            "padding": enc.padding,
            "seed": gen.seed,
            "steps": len(sigmas) - 1,
            "shift": shift,
            "shift_source": shift_source,
            "sigmas": [round(float(s), 8) for s in sigmas],
            "width": gen.width,
            "height": gen.height,
            "guidance_scale": gen.guidance_scale,
            "negative_prompt": gen.negative_prompt
            if gen.guidance_scale > 0 and request.negative_embeddings is None
            else None,
            "cfg_normalization": gen.cfg_normalization if cfg else None,
            "cfg_truncation": gen.cfg_truncation if cfg else None,
            "refiner": gen.refiner,
            "model_path": self.model_path,
            "model_fingerprint": self.fingerprint,
            "devices": self._devices(positive, negative),
            "acceleration": self.acceleration.facts() if self.acceleration is not None else None,
            "vae_tiled": self.pipeline_settings.vae_tiling and needs_tiles(self.vae, gen.height, gen.width),
            "versions": package_versions(),
            "llm_dit_version": __version__,
            "created": utc_now(),
        }
        text = positive.text if isinstance(positive, ComposedConditioning) else positive
        if isinstance(text, EncodedPrompt):
            record.update(
                formatted_prompt=text.formatted_prompt,
                token_count=text.token_count,
                embedding_length=text.length,
                truncated=text.truncated,
                compressed=text.compressed,
                conditioning="prompt",
            )
        elif isinstance(text, torch.Tensor):  # precomputed features (as given, or composed to a fill target)
            record.update(
                formatted_prompt=None,
                token_count=None,
                embedding_length=int(text.shape[0]),
                conditioning="precomputed embeddings",
                embeddings_fingerprint=tensor_fingerprint(text),
            )
        else:
            record.update(formatted_prompt=None, token_count=None)
        if isinstance(positive, ComposedConditioning):
            # The source, its layer, token mode, blend, normalisation, masking and lengths: how the features were made.
            source = request.conditioning.conditioning
            record.update(positive.record)
            if not isinstance(text, torch.Tensor):
                record["conditioning"] = "prompt" if source == "text" else source
            record["embedding_length"] = int(positive.embeddings.shape[0])
            record["source_model"] = self.sources.fingerprint(source) if source != "text" else None
        if not isinstance(text, EncodedPrompt) and not isinstance(negative, EncodedPrompt):
            # No text was encoded: the encoder's settings did not shape this image; don't claim they did.
            for key in _ENCODER_RECORD_KEYS:
                record[key] = None
        if isinstance(negative, EncodedPrompt):
            record["negative_formatted_prompt"] = negative.formatted_prompt
        elif isinstance(negative, torch.Tensor):
            record["negative_embeddings_fingerprint"] = tensor_fingerprint(negative)
        if isinstance(features, StepFeatures):
            c = request.conditioning
            if isinstance(positive, ComposedConditioning):  # the settings as asked, not the first step's
                record["conditioning_settings"] = conditioning_params(c)
            record.update(
                vl_alpha_schedule=c.vl_alpha_schedule,
                prompt_switch=c.prompt_switch,
                prompt_switch_step=c.prompt_switch_step,
                conditioning_schedule=features.schedule,
                distinct_step_features=len({id(f) for f in features.steps}),
            )
        if gen.init_image is not None:
            from llm_dit.files import input_image

            full, sha = input_image(gen.init_image, "init_image")
            schedule_steps = check_schedule(gen.steps, shift, gen.sigmas)
            record.update(
                init_image=str(full),
                init_image_sha256=sha,
                strength=gen.resolved_strength,
                schedule_steps=schedule_steps,
                img2img_start_step=img2img_start(schedule_steps, gen.resolved_strength),
            )
        return record

    def _devices(self, positive: Features, negative: Features | None) -> dict[str, str]:
        """Where the DiT and VAE ran and, when text was encoded, where the encoder did (as recorded at encode
        time: still true after :meth:`offload_encoder`, or for an encoding cached earlier)."""
        out = {}
        for name, lazy in (("dit", self._transformer), ("vae", self._vae)):
            if lazy._value is not None:
                out[name] = module_device(lazy._value)
        text = positive.text if isinstance(positive, ComposedConditioning) else positive
        for item in (text, negative):
            if isinstance(item, EncodedPrompt) and item.encoder_device is not None:
                out["encoder"] = item.encoder_device
                break
        out.update(self.sources.devices_used(positive))
        return out


def _tensor_of(item: Features) -> torch.Tensor:
    return item if isinstance(item, torch.Tensor) else item.embeddings


def _variant_key(request: GenerationRequest) -> str:
    """What makes one step's caption features: its prompt, conditioning, encoder overrides and CFG negative."""
    gen = request.generation
    negative = gen.negative_prompt if gen.guidance_scale > 0 else None
    payload = [request.prompt, request.conditioning.model_dump(), request.encoder, negative]
    return json.dumps(payload, sort_keys=True, default=str)

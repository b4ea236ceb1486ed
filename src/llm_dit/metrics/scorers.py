"""Text-image scores from local contrastive models: SigLIP/SigLIP2 match probability, CLIPScore, PickScore and
HPSv2.1.

Models load from local directories only (``local_files_only=True``): there is no hub access. A directory is
checked first (it exists, its config.json names a supported model_type, its weight, tokenizer and image
processor files are there), so a wrong path fails in milliseconds with one line that names the path, the
problem and the setting to fix, before any weights load. HPSv2.1 is the exception to the layout: its directory
holds open_clip's state dict file and the CLIP tokenizer, converted at load time (llm_dit.metrics.hpsv2).

Each score is per pair (``images[i]``, ``texts[i]``) and does not depend on the other pairs in the call or on
the batch size: SigLIP text is always padded to the full 64 tokens, CLIP text only within its batch but under a
causal mask that keeps padding out of the pooled end-of-text token.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

import torch

from llm_dit.errors import CheckpointError, LlmDitError
from llm_dit.metrics import hpsv2
from llm_dit.models.devices import quiet_hf, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "SCORERS",
    "ClipScorer",
    "HpsV2Scorer",
    "ImageTextScorer",
    "PickScoreScorer",
    "SiglipScorer",
    "text_inputs",
]

TextKind = Literal["siglip", "clip"]

# SigLIP and SigLIP2 were trained on text padded to 64 tokens; CLIP's text tower has 77 positions. Used when
# text_inputs is called without the model's own length.
_DEFAULT_TEXT_LENGTH: dict[str, int] = {"siglip": 64, "clip": 77}


def text_inputs(
    processor_or_tokenizer: Any, texts: Sequence[str], kind: TextKind, max_length: int | None = None
) -> dict[str, torch.Tensor]:
    """Tokenize ``texts`` the way the ``kind`` model family was trained; returns the text-tower kwargs.

    siglip: lower-cased (SigLIP2 was trained on lower-cased text; SigLIP's own tokenizer lower-cases too),
    padded on the right to exactly ``max_length`` (64) and truncated to it. The tower pools the LAST position,
    so the padding must be there and on the right whatever the tokenizer's padding_side (Gemma's is "left").
    Only input_ids: big_vision trained the text tower without a padding mask, so pads are attended to.

    clip: as torchmetrics' CLIPScore: padded to the longest text, truncated to ``max_length`` (77, keeping the
    end-of-text token), with the attention mask.
    """
    if kind not in _DEFAULT_TEXT_LENGTH:
        raise ValueError(f"unknown text kind {kind!r}; use 'siglip' or 'clip'")
    tokenizer = getattr(processor_or_tokenizer, "tokenizer", processor_or_tokenizer)
    length = max_length if max_length is not None else _DEFAULT_TEXT_LENGTH[kind]
    if kind == "siglip":
        encoded = tokenizer(
            [text.lower() for text in texts],
            padding="max_length",
            max_length=length,
            truncation=True,
            padding_side="right",
            return_tensors="pt",
        )
        return {"input_ids": encoded["input_ids"]}
    encoded = tokenizer(list(texts), padding=True, truncation=True, max_length=length, return_tensors="pt")
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def _read_config(root: Path, fix: str) -> dict[str, Any]:
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{root}: cannot read config.json ({exc}); {fix}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{root}: config.json is not a JSON object; {fix}")
    return config


def _missing_weights(root: Path) -> str | None:
    """What is wrong with the weights of a transformers model directory, or None when they are there."""
    indexes = sorted(root.glob("*.safetensors.index.json")) or sorted(root.glob("pytorch_model*.bin.index.json"))
    for index in indexes:
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as exc:
            return f"cannot read {index.name} ({exc})"
        missing = sorted(shard for shard in set(weight_map.values()) if not (root / shard).is_file())
        if missing:
            return f"missing weight shards {', '.join(missing)} (listed in {index.name})"
    if indexes or (root / "model.safetensors").is_file() or (root / "pytorch_model.bin").is_file():
        return None
    return "no weights (model.safetensors, or a *.safetensors.index.json with its shards)"


# Any one of these holds a tokenizer's vocabulary. Without one AutoProcessor still "loads" (a Gemma tokenizer
# falls back to its 5 special tokens and maps every word to <unk>), so their absence must be caught up front.
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "sentencepiece.bpe.model")
# transformers 5 saves the image processor inside processor_config.json; hub checkpoints have preprocessor_config.json.
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")


def _missing_processor(root: Path) -> str | None:
    """What is missing for AutoProcessor (tokenizer vocabulary, image processor config), or None."""
    missing = []
    if not any((root / name).is_file() for name in _TOKENIZER_FILES):
        missing.append(f"tokenizer files ({' or '.join(_TOKENIZER_FILES)})")
    if not any((root / name).is_file() for name in _IMAGE_PROCESSOR_FILES):
        missing.append(f"image processor config ({' or '.join(_IMAGE_PROCESSOR_FILES)})")
    return f"no {' and no '.join(missing)}" if missing else None


def _embeddings(output: Any) -> torch.Tensor:
    """The projected embeddings from a get_*_features result.

    transformers 5 returns a BaseModelOutputWithPooling whose pooler_output is the projected embedding (for
    SigLIP the head output, for CLIP the projection); transformers 4 returned the tensor itself.
    """
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def _check_batch_size(name: str, batch_size: int) -> None:
    if batch_size < 1:
        raise LlmDitError(f"{name} batch size must be at least 1, got {batch_size}")


def _cosine(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity, in float32 whatever the model dtype."""
    image_embeds = torch.nn.functional.normalize(image_embeds.float(), dim=-1)
    text_embeds = torch.nn.functional.normalize(text_embeds.float(), dim=-1)
    return (image_embeds * text_embeds).sum(dim=-1)


class ImageTextScorer:
    """An image-text alignment model loaded from a local directory: one score per (image, text) pair.

    Build with :meth:`from_pretrained`. ``name`` is the metric's name, for messages. What a stored value
    depends on (the metric's version, the weights' fingerprint, the dtype) is kept by the metrics pass: bump
    the version in ``llm_dit.metrics.registry.METRICS`` when the computation changes.
    """

    name: ClassVar[str]
    text_kind: ClassVar[TextKind]
    model_types: ClassVar[frozenset[str]]  # config.json model_type values this scorer accepts
    family: ClassVar[str]  # for messages: "SigLIP/SigLIP2"
    config_key: ClassVar[str]  # the setting that points at the directory, for messages
    wanted: ClassVar[str]  # what that setting should point at, for messages

    def __init__(
        self, path: Path, model: Any, processor: Any, *, device: torch.device, dtype: torch.dtype, batch_size: int
    ) -> None:
        """Wrap an already loaded model; use :meth:`from_pretrained` instead."""
        _check_batch_size(self.name, batch_size)
        self.path = path
        self.model: Any = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.text_length = int(model.config.text_config.max_position_embeddings)

    @classmethod
    def _fix(cls) -> str:
        return f"set [default.metrics] {cls.config_key} to {cls.wanted}"

    @classmethod
    def check_directory(cls, path: str | Path) -> Path:
        """Check that ``path`` is a complete local model directory of a supported model_type; loads nothing.

        Reads config.json (and a weight index, if sharded) and looks for the weight, tokenizer and image
        processor files. Returns the expanded path; raises CheckpointError (an LlmDitError) with one line naming
        the path, what is wrong and the fix.
        """
        root = Path(path).expanduser()
        fix = cls._fix()
        if not root.exists():
            raise CheckpointError(f"{root}: {cls.family} model directory does not exist; {fix}")
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory; {fix}")
        if not (root / "config.json").is_file():
            raise CheckpointError(f"{root}: not a {cls.family} model directory (no config.json); {fix}")
        model_type = _read_config(root, fix).get("model_type")
        if model_type not in cls.model_types:
            found = f"model_type {model_type!r}" if model_type is not None else "no model_type"
            raise CheckpointError(f"{root}: not a {cls.family} model directory (config.json {found}); {fix}")
        for problem in (_missing_weights(root), _missing_processor(root)):
            if problem is not None:
                raise CheckpointError(f"{root}: incomplete {cls.family} model directory: {problem}; {fix}")
        return root

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        batch_size: int = 16,
    ) -> Self:
        """Load the model and processor from the local directory ``path`` (checked first, see check_directory).

        ``device``/``dtype`` as elsewhere ("auto": cuda + bfloat16 if available, else cpu + float32).
        """
        root = cls.check_directory(path)
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        _check_batch_size(cls.name, batch_size)

        from transformers import AutoModel, AutoProcessor

        # Straight onto an accelerator (no full CPU copy first); CPU loading needs no map.
        device_map = None if resolved_device.type == "cpu" else {"": resolved_device}
        try:
            with quiet_hf():
                # The processor first: it is small, so a broken tokenizer fails before the weights load.
                processor = AutoProcessor.from_pretrained(root, local_files_only=True)
                model = AutoModel.from_pretrained(
                    root, dtype=resolved_dtype, device_map=device_map, local_files_only=True
                )
        except Exception as exc:  # any loading failure (OSError, ValueError, SafetensorError, ...) is one line
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{root}: cannot load the {cls.family} model: {first_line}; {cls._fix()}") from exc
        for part in ("tokenizer", "image_processor"):
            if getattr(processor, part, None) is None:
                raise CheckpointError(f"{root}: the saved processor has no {part}; {cls._fix()}")
        model = model.to(resolved_device).eval().requires_grad_(False)
        return cls(root, model, processor, device=resolved_device, dtype=resolved_dtype, batch_size=batch_size)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> list[float]:
        """One score per pair (``images[i]``, ``texts[i]``), computed in batches of ``batch_size`` pairs."""
        if len(images) != len(texts):
            raise ValueError(f"{self.name}: got {len(images)} images but {len(texts)} texts; they are scored in pairs")
        if self.model is None:
            raise LlmDitError(f"{self.name} scorer for {self.path} was unloaded; load it again to score")
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                stop = start + self.batch_size
                batch = self._score_batch(list(images[start:stop]), list(texts[start:stop]))
                scores.extend(float(value) for value in batch.cpu().tolist())
        return scores

    def unload(self) -> None:
        """Drop the model (and free its accelerator memory); the scorer cannot score afterwards."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unload()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(path={str(self.path)!r}, device={self.device}, dtype={self.dtype})"

    def _to_device(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Move tensors to the model's device; floating ones (pixels) also to its dtype, ids and masks stay ints."""
        return {
            key: value.to(self.device, self.dtype) if value.is_floating_point() else value.to(self.device)
            for key, value in inputs.items()
        }

    def _image_inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        # The image processor itself, not processor(images=...): Siglip2Processor applies its class defaults
        # (16-pixel patches, 256 patches) over the checkpoint's saved image processor settings.
        rgb = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        encoded = self.processor.image_processor(images=rgb, return_tensors="pt")
        return self._to_device(dict(encoded))

    def _text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self._to_device(text_inputs(self.processor, texts, self.text_kind, max_length=self.text_length))

    def _cosines(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        """Cosine similarity of each image embedding with its own text's embedding (float32)."""
        image_embeds = _embeddings(self.model.get_image_features(**self._image_inputs(images)))
        text_embeds = _embeddings(self.model.get_text_features(**self._text_inputs(texts)))
        return _cosine(image_embeds, text_embeds)

    def _score_batch(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        raise NotImplementedError


class SiglipScorer(ImageTextScorer):
    """SigLIP2 (or SigLIP) match probability: ``sigmoid(exp(logit_scale) * cos(image, text) + logit_bias)``.

    The diagonal of the model's sigmoid(logits_per_image), computed per pair. Accepts fixed-resolution
    checkpoints (model_type "siglip": SiglipModel, e.g. google/siglip2-so400m-patch14-384) and NaFlex ones
    (model_type "siglip2": Siglip2Model, e.g. google/siglip2-so400m-patch16-naflex).
    """

    name = "siglip"
    text_kind = "siglip"
    model_types = frozenset({"siglip", "siglip2"})
    family = "SigLIP/SigLIP2"
    config_key = "siglip_path"
    wanted = "a local SigLIP2 checkpoint"

    def _score_batch(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        logits = self._cosines(images, texts) * self.model.logit_scale.float().exp() + self.model.logit_bias.float()
        return torch.sigmoid(logits)


class _ClipModelScorer(ImageTextScorer):
    """A score from a transformers CLIPModel (model_type "clip"): CLIP's text handling (padded to the batch's
    longest text, truncated to 77 with the end-of-text token kept, with the attention mask) and the cosine of the
    two towers' projected embeddings. Subclasses say what they make of the cosine."""

    text_kind = "clip"
    model_types = frozenset({"clip"})


class ClipScorer(_ClipModelScorer):
    """CLIPScore as torchmetrics computes it: ``100 * max(cos(image, text), 0)``, in [0, 100]."""

    name = "clip_score"
    family = "CLIP"
    config_key = "clip_path"
    wanted = "a local CLIP checkpoint (e.g. openai/clip-vit-large-patch14)"

    def _score_batch(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        return 100.0 * self._cosines(images, texts).clamp(min=0.0)


class PickScoreScorer(_ClipModelScorer):
    """PickScore (Kirstain et al., 2023): ``exp(logit_scale) * cos(image, text)`` of PickScore_v1, a CLIP-H model
    fine-tuned on human preferences (Pick-a-Pic), as its reference code computes it: L2-normalised image and text
    embeddings, the model's own learned ``logit_scale`` (exp ~ 100 for PickScore_v1), no clamp. Text is tokenized
    as the reference does (``padding=True, truncation=True, max_length=77``, with the attention mask).
    """

    name = "pickscore"
    family = "PickScore (CLIP)"
    config_key = "pickscore_path"
    wanted = "a local PickScore_v1 checkpoint with its CLIP-H processor files"

    def _score_batch(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        return self._cosines(images, texts) * self.model.logit_scale.float().exp()


class HpsV2Scorer(_ClipModelScorer):
    """HPSv2.1 (Wu et al., 2023): ``cos(image, text)`` of the HPS_v2.1 CLIP-H model, as ``hpsv2/img_score.py``
    computes it (the diagonal of ``image_features @ text_features.T`` of L2-normalised features, no logit scale).

    The directory holds ``HPS_v2.1_compressed.pt`` (open_clip's ViT-H-14 state dict, mapped onto a transformers
    CLIPModel at load time) and the CLIP-H tokenizer files. Images go through HPSv2's own transform (longest side to
    224, black padding), not an image processor; text through the CLIP tokenizer after HPSv2's HTML unescaping.
    See llm_dit.metrics.hpsv2 for what was checked against open_clip and what differs (ftfy).
    """

    name = "hpsv2"
    family = "HPSv2.1"
    config_key = "hpsv2_path"
    wanted = "a directory with HPS_v2.1_compressed.pt and the CLIP-H tokenizer files"

    @classmethod
    def check_directory(cls, path: str | Path) -> Path:
        """Check that ``path`` is a directory with the checkpoint file (present, a torch.save archive by its first
        bytes) and tokenizer files; loads nothing. Returns the expanded path; CheckpointError otherwise."""
        root = Path(path).expanduser()
        fix = cls._fix()
        if not root.exists():
            raise CheckpointError(f"{root}: {cls.family} directory does not exist; {fix}")
        if not root.is_dir():
            raise CheckpointError(f"{root}: not a directory; {fix}")
        hpsv2.check_file(root / hpsv2.CHECKPOINT_NAME, fix)
        if not any((root / name).is_file() for name in _TOKENIZER_FILES):
            raise CheckpointError(
                f"{root}: incomplete {cls.family} directory: no tokenizer files ({' or '.join(_TOKENIZER_FILES)}); "
                f"{fix}"
            )
        return root

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = "auto",
        dtype: str | torch.dtype | None = "auto",
        batch_size: int = 16,
    ) -> Self:
        """Load the tokenizer, then the state dict converted to a CLIPModel, from the directory ``path`` (checked
        first, see check_directory); ``device``/``dtype`` as for the other scorers."""
        root = cls.check_directory(path)
        resolved_device = resolve_device(device)
        resolved_dtype = resolve_dtype(dtype, resolved_device)
        _check_batch_size(cls.name, batch_size)

        from transformers import AutoTokenizer

        try:
            with quiet_hf():
                tokenizer = AutoTokenizer.from_pretrained(root, local_files_only=True)
        except Exception as exc:  # any loading failure is one line
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise CheckpointError(f"{root}: cannot load the CLIP tokenizer: {first_line}; {cls._fix()}") from exc
        model = hpsv2.load_model(
            root / hpsv2.CHECKPOINT_NAME, tokenizer, device=resolved_device, dtype=resolved_dtype, fix=cls._fix()
        )
        return cls(root, model, tokenizer, device=resolved_device, dtype=resolved_dtype, batch_size=batch_size)

    def _image_inputs(self, images: list[Image.Image]) -> dict[str, torch.Tensor]:
        size = int(self.model.config.vision_config.image_size)
        return self._to_device({"pixel_values": hpsv2.pixel_values(images, size)})

    def _text_inputs(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return super()._text_inputs([hpsv2.clean_text(text) for text in texts])

    def _score_batch(self, images: list[Image.Image], texts: list[str]) -> torch.Tensor:
        return self._cosines(images, texts)


# The [PROFILE.metrics] setting of each scorer's directory -> its class (the metrics pass and check_weights).
SCORERS: dict[str, type[ImageTextScorer]] = {
    cls.config_key: cls for cls in (SiglipScorer, ClipScorer, PickScoreScorer, HpsV2Scorer)
}

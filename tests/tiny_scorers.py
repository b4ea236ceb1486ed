"""Tiny, random but real SigLIP / SigLIP2 (NaFlex) / CLIP model directories for the scorer tests, built offline
(a CLIP one with its own logit scale is the PickScore twin).

Each directory is what ``save_pretrained`` writes for the real transformers classes: config.json,
model.safetensors, and a processor (real image processor + real tokenizer) that ``AutoProcessor`` loads back.
The tokenizers are built from a vocabulary written here: single characters plus a byte fallback (Gemma) or the
byte-level alphabet (CLIP), so any prompt tokenizes.
"""

from __future__ import annotations

import contextlib
import math
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from llm_dit.models.devices import quiet_hf

__all__ = ["build_tiny_clip", "build_tiny_siglip"]

_HIDDEN = 32
_LAYERS = 2
_HEADS = 2
_IMAGE = 32  # fixed-resolution towers: 32x32 pixels in 8x8 patches (a 4x4 grid)
_PATCH = 8
_NAFLEX_PATCHES = 16  # NaFlex: at most 16 patches of 8x8, aspect ratio kept
_SIGLIP_TEXT_LEN = 64  # what every released SigLIP/SigLIP2 text tower uses
_CLIP_TEXT_LEN = 77
_CLIP_SHARED_OFFSET = 0.5  # see build_tiny_clip

# A few merges so the tokenizers do real BPE on common words; everything else falls back to characters/bytes.
_WORDS = ("a", "the", "of", "photo", "cat", "dog", "red", "blue", "in", "on")


def _tower(**extra: int) -> dict[str, int]:
    return {
        "hidden_size": _HIDDEN,
        "intermediate_size": 2 * _HIDDEN,
        "num_hidden_layers": _LAYERS,
        "num_attention_heads": _HEADS,
        **extra,
    }


def _word_merges(prefix: str, suffix: str, vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Left-to-right merges that spell each of _WORDS as prefix + word + suffix; adds the pieces to ``vocab``."""
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = ([prefix] if prefix else []) + list(word)
        pieces[-1] += suffix
        current = pieces[0]
        for piece in pieces[1:]:
            if (current, piece) not in merges:
                merges.append((current, piece))
            current += piece
            vocab.setdefault(current, len(vocab))
    return merges


def _gemma_tokenizer() -> Any:
    """A GemmaTokenizer (SentencePiece-style BPE with byte fallback), as SigLIP2 checkpoints ship."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"])}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for char in "▁" + string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(char, len(vocab))
    merges = _word_merges("▁", "", vocab)
    return GemmaTokenizer(vocab=vocab, merges=merges)


def _clip_tokenizer() -> Any:
    """A CLIPTokenizer: byte-level BPE with CLIP's ``</w>`` end-of-word suffix."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for char in alphabet:
        vocab[char] = len(vocab)
    for char in alphabet:
        vocab[char + "</w>"] = len(vocab)
    merges = _word_merges("", "</w>", vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges)


@contextlib.contextmanager
def _seeded_and_quiet(seed: int) -> Iterator[None]:
    """Seed torch without disturbing the caller's RNG, and silence transformers while building.

    Quiet because image processor classes warn that torchvision is missing (they fall back to PIL) and saving
    a SiglipConfig validates a default SiglipTextConfig whose token ids exceed its own vocabulary (a warning).
    """
    with torch.random.fork_rng(devices=[]), quiet_hf():
        torch.manual_seed(seed)
        yield


def build_tiny_siglip(directory: Path, *, naflex: bool = False, seed: int = 0) -> Path:
    """Write a tiny SigLIP2 checkpoint to ``directory`` and return it: fixed-resolution (model_type "siglip",
    SiglipModel, like google/siglip2-*-patch16-224) or NaFlex (model_type "siglip2", Siglip2Model)."""
    directory = Path(directory)
    with _seeded_and_quiet(seed):
        from transformers import (  # inside: importing an image processor warns that torchvision is missing
            Siglip2Config,
            Siglip2ImageProcessor,
            Siglip2Model,
            Siglip2Processor,
            SiglipConfig,
            SiglipImageProcessor,
            SiglipModel,
            SiglipProcessor,
        )

        tokenizer = _gemma_tokenizer()
        text = _tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=_SIGLIP_TEXT_LEN,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        model: Any
        processor: Any
        if naflex:
            model = Siglip2Model(
                Siglip2Config(text_config=text, vision_config=_tower(num_patches=_NAFLEX_PATCHES, patch_size=_PATCH))
            )
            # The image processor must carry the tower's patch size and patch budget: the model reads them from
            # nowhere else.
            image_processor = Siglip2ImageProcessor(patch_size=_PATCH, max_num_patches=_NAFLEX_PATCHES)
            processor = Siglip2Processor(image_processor=image_processor, tokenizer=tokenizer)
        else:
            model = SiglipModel(
                SiglipConfig(text_config=text, vision_config=_tower(image_size=_IMAGE, patch_size=_PATCH))
            )
            image_processor = SiglipImageProcessor(size={"height": _IMAGE, "width": _IMAGE})
            processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
        # transformers initialises logit_scale and logit_bias to 0; give them real-looking values so that a scorer
        # ignoring either is caught.
        with torch.no_grad():
            model.logit_scale.fill_(math.log(10.0))
            model.logit_bias.fill_(-2.0)
        model.save_pretrained(directory)
        processor.save_pretrained(directory)
    return directory


def build_tiny_clip(directory: Path, seed: int = 0, logit_scale: float | None = None) -> Path:
    """Write a tiny CLIP checkpoint (model_type "clip", CLIPModel) to ``directory`` and return it.

    ``logit_scale``: the value of exp(logit_scale) to save (None keeps CLIPConfig's initial 1 / 0.07). A PickScore
    twin sets one that is neither 1 / 0.07 nor 100, so that a scorer using a constant instead of the model's own
    scale is caught.
    """
    directory = Path(directory)
    with _seeded_and_quiet(seed):
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        tokenizer = _clip_tokenizer()
        text = _tower(
            vocab_size=len(tokenizer),
            max_position_embeddings=_CLIP_TEXT_LEN,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            # The real eos id makes CLIP pool at the first eos; the legacy value 2 would pool at argmax(input_ids).
            eos_token_id=tokenizer.eos_token_id,
        )
        config = CLIPConfig(
            text_config=text, vision_config=_tower(image_size=_IMAGE, patch_size=_PATCH), projection_dim=16
        )
        model = CLIPModel(config)
        # Random towers give image and text embeddings that point apart, so nearly every CLIPScore would clamp
        # to 0 and hide the formula. A shared projection and a shared offset in the final norms align them
        # loosely: most pairs score in (0, 50), a few still clamp.
        with torch.no_grad():
            model.text_projection.weight.copy_(model.visual_projection.weight)
            model.text_model.final_layer_norm.bias.fill_(_CLIP_SHARED_OFFSET)
            model.vision_model.post_layernorm.bias.fill_(_CLIP_SHARED_OFFSET)
            if logit_scale is not None:
                model.logit_scale.fill_(math.log(logit_scale))
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": _IMAGE}, crop_size={"height": _IMAGE, "width": _IMAGE}
        )
        model.save_pretrained(directory)
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory

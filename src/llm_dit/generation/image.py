"""Latents -> pixels -> PNG files that carry their own record."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch import nn

from llm_dit.errors import LlmDitError
from llm_dit.files import write_atomic

RECORD_KEY = "llm_dit"  # PNG text chunk holding the full JSON record
PARAMETERS_KEY = "parameters"  # A1111-style one-line summary, read by common image viewers


@torch.no_grad()
def decode_latents(vae: nn.Module, latents: torch.Tensor, tiled: bool = False) -> torch.Tensor:
    """Decode fp32 latents ``[B, 16, h, w]`` to images ``[B, 3, H, W]`` in [0, 1] (fp32, on the VAE's device).

    Same arithmetic as diffusers, in the VAE's dtype: ``z / scaling_factor + shift_factor``, decode,
    ``(x * 0.5 + 0.5).clamp(0, 1)``; only then fp32. (Denormalising in fp32 instead would be a little more
    precise, but in bf16 it moves pixels by up to ~0.002 away from what ZImagePipeline returns.)

    ``tiled``: an image larger than one VAE tile (``vae.config.sample_size`` px, 1024 for Z-Image's) is decoded by
    diffusers' ``AutoencoderKL.tiled_decode``: tiles of ``sample_size`` px overlapping by a quarter, each decoded on
    its own and blended linearly across the overlap, so memory no longer grows with the image. Each tile's group
    norms see only that tile, so tiled pixels differ from untiled ones (by the model's sensitivity, not only rounding):
    the vae numerics of run ids say when tiling is on. Images that fit one tile decode exactly as untiled.
    """
    param = next(vae.parameters())
    z = latents.to(device=param.device, dtype=param.dtype)
    z = z / vae.config.scaling_factor + vae.config.shift_factor
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if tiled else 1  # pixels per latent (8)
    if tiled and needs_tiles(vae, z.shape[-2] * factor, z.shape[-1] * factor):
        image = vae.tiled_decode(z, return_dict=False)[0]
    else:
        image = vae.decode(z, return_dict=False)[0]
    return (image * 0.5 + 0.5).clamp(0, 1).float()


def needs_tiles(vae: nn.Module, height: int, width: int) -> bool:
    """Whether an image of this size (pixels) is larger than one VAE tile (what ``tiled_decode`` splits)."""
    tile = int(vae.config.sample_size)
    return height > tile or width > tile


@torch.no_grad()
def encode_image(vae: nn.Module, pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Latents ``[1, 16, h, w]`` (the VAE's dtype and device) of one image ``[1, 3, H, W]`` in [-1, 1], sampled from the
    VAE's posterior with ``generator`` and normalised as the DiT reads them: ``(z - shift_factor) * scaling_factor``.

    diffusers' img2img arithmetic (``retrieve_latents(vae.encode(x), generator)``): the posterior sample draws
    ``randn`` of the posterior's shape from ``generator`` before the noise is drawn from it. The draw is made on the
    generator's device and moved, as diffusers' ``randn_tensor`` does when they differ.
    """
    param = next(vae.parameters())
    posterior = vae.encode(pixels.to(device=param.device, dtype=param.dtype)).latent_dist
    eps = torch.randn(
        posterior.mean.shape, generator=generator, device=generator.device, dtype=posterior.parameters.dtype
    ).to(posterior.mean.device)
    z = posterior.mean + posterior.std * eps
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def load_init_image(path: str | Path, width: int, height: int, size_multiple: int) -> torch.Tensor:
    """An init image as diffusers' ``VaeImageProcessor.preprocess`` gives it: RGB, resized to ``width`` x ``height``
    (LANCZOS; unchanged at that size) and scaled to [-1, 1], ``[1, 3, H, W]`` fp32."""
    from diffusers.image_processor import VaeImageProcessor

    with Image.open(Path(path).expanduser()) as opened:
        rgb = opened.convert("RGB")
    processor = VaeImageProcessor(vae_scale_factor=size_multiple)
    return processor.preprocess(rgb, height=height, width=width).to(torch.float32)


def to_pil(image: torch.Tensor) -> Image.Image:
    """``[3, H, W]`` in [0, 1] -> RGB PIL image, rounding as diffusers' ``numpy_to_pil`` does."""
    array = image.detach().permute(1, 2, 0).cpu().float().numpy()
    return Image.fromarray((array * 255).round().astype(np.uint8))


def save_png(image: Image.Image, path: str | Path, record: dict[str, Any], parameters: str) -> Path:
    """Write a PNG with the record as text chunks, atomically and durably (:func:`llm_dit.files.write_atomic`):
    never half-written, and on disk before a results store marks its run done."""
    write_png(image, path, record, parameters)
    return Path(path)


def write_png(image: Image.Image, path: str | Path, record: dict[str, Any], parameters: str) -> str:
    """Write the PNG as :func:`save_png` does and return the sha256 (hex) of the bytes written: the image's
    identity in a results store, taken from the very bytes that went to disk (hashing the file afterwards could
    see another one)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt(RECORD_KEY, json.dumps(record, sort_keys=True))
    info.add_itxt(PARAMETERS_KEY, parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    data = buffer.getvalue()
    write_atomic(path, data)
    return hashlib.sha256(data).hexdigest()


def read_record(path: str | Path) -> dict[str, Any]:
    """The JSON record stored in a PNG written by llm-dit."""
    with Image.open(path) as img:
        text = img.text.get(RECORD_KEY)  # type: ignore[attr-defined]
    if text is None:
        raise LlmDitError(f"{path} carries no llm-dit record (no '{RECORD_KEY}' text chunk)")
    return json.loads(text)

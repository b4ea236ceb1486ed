"""Tiled VAE decode (``[default.pipeline] vae_tiling``) on the tiny VAE (64 px tiles): images that fit one tile decode
exactly as untiled; a larger image's corners are exactly their own tile's decode (borders neither zeroed nor cropped,
the seed project's defect) and each seam is exactly the linear blend of its two tiles; the setting reaches the record
and the run id."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_dit.config import PipelineSettings, Settings
from llm_dit.generation.checks import resolved_numerics
from llm_dit.generation.image import decode_latents, needs_tiles
from llm_dit.generation.pipeline import LlmDitPipeline


@pytest.fixture(scope="module")
def vae(tiny_checkpoint: Path) -> torch.nn.Module:
    from llm_dit.models.checkpoint import load_vae

    return load_vae(tiny_checkpoint, "cpu", torch.float32)


def _latents(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 16, height, width, generator=torch.Generator().manual_seed(seed))


def _raw(vae: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The decoder's output for normalised latents ``z``, before diffusers' denormalisation (as tiled_decode sees)."""
    return vae.decode(z / vae.config.scaling_factor + vae.config.shift_factor, return_dict=False)[0]


def _pixels(raw: torch.Tensor) -> torch.Tensor:
    return (raw * 0.5 + 0.5).clamp(0, 1).float()


def test_one_tile_decodes_exactly_as_untiled(vae: torch.nn.Module) -> None:
    assert vae.config.sample_size == 64 and not needs_tiles(vae, 64, 64) and needs_tiles(vae, 64, 72)
    z = _latents(8, 8)
    assert torch.equal(decode_latents(vae, z, tiled=True), decode_latents(vae, z))


def test_corners_are_their_tile_s_decode_and_seams_the_blend(vae: torch.nn.Module) -> None:
    # 96 x 128 px (latents 12 x 16). Tiles: 8 latents (64 px), a new one every 6 (48 px), blended over 16 px.
    z = _latents(12, 16, seed=1)
    tiled = decode_latents(vae, z, tiled=True)
    untiled = decode_latents(vae, z)
    assert tiled.shape == untiled.shape == (1, 3, 96, 128)
    # Top-left: rows and columns 0-47 come from the first tile alone.
    first = _raw(vae, z[:, :, 0:8, 0:8])
    assert torch.equal(tiled[..., 0:48, 0:48], _pixels(first)[..., 0:48, 0:48])
    # Bottom-right border: the last tile (latent rows 6-11, columns 12-15) past its blend zone, to the last pixel.
    last = _raw(vae, z[:, :, 6:12, 12:16])
    assert torch.equal(tiled[..., 64:96, 112:128], _pixels(last)[..., 16:48, 16:32])
    # The seam between the first two tiles of the top row: the first tile fades out over 16 columns as the second
    # fades in (diffusers' blend_h), rows 0-47 (above the next row's blend zone).
    second = _raw(vae, z[:, :, 0:8, 6:14])
    blended = second.clone()
    for x in range(16):
        blended[..., x] = first[..., -16 + x] * (1 - x / 16) + second[..., x] * (x / 16)
    assert torch.equal(tiled[..., 0:48, 48:64], _pixels(blended)[..., 0:48, 0:16])
    # Tiling changes pixels (each tile's group norms see only that tile): that is why it is in the run id.
    assert not torch.equal(tiled, untiled)


def test_the_setting_reaches_the_record_and_the_run_id(tiny_checkpoint: Path) -> None:
    on = PipelineSettings(vae_tiling=True)
    assert resolved_numerics(Settings(pipeline=on))["vae"].endswith("+tiled")
    assert not resolved_numerics(Settings())["vae"].endswith("+tiled")
    pipe = LlmDitPipeline.from_pretrained(tiny_checkpoint, pipeline={"device": "cpu", "vae_tiling": True})
    big = pipe.generate("a cat", seed=1, width=128, height=96, steps=2)
    small = pipe.generate("a cat", seed=1, width=64, height=64, steps=2)
    assert big.record["vae_tiled"] is True and small.record["vae_tiled"] is False
    assert big.image.shape == (3, 96, 128)

"""Latents -> pixels (image.py): the VAE decode step against diffusers' ZImagePipeline and a hand computation.

The de-normalisation is diffusers' ``latents / vae.config.scaling_factor + vae.config.shift_factor`` (the inverse
of the VAE encoder's ``(x - shift) * scale``), then ``vae.decode`` and ``image_processor.postprocess``. Our decode
does the same float operations in the same order, so results are compared bit for bit (tolerance policy 2).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from torch import nn

from bounds import assert_bit_equal
from llm_dit.constants import VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR
from llm_dit.generation.image import decode_latents
from llm_dit.models import checkpoint

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads


class IdentityVAE(nn.Module):
    """A stand-in whose decode returns its first 3 latent channels untouched: decode_latents' own arithmetic
    shows through, and the expected pixels can be written out by hand."""

    def __init__(self, scaling_factor: float, shift_factor: float) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # decode_latents reads the device and dtype off a parameter
        self.config = SimpleNamespace(scaling_factor=scaling_factor, shift_factor=shift_factor)

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        return (z[:, :3],)


def small_latents(seed: int, shape: tuple[int, ...] = (2, 16, 4, 6)) -> torch.Tensor:
    # Small enough that z / 0.3611 + 0.1159 stays inside [-1, 1]: no pixel is clamped, every one is checked.
    return 0.2 * torch.rand(shape, generator=torch.Generator().manual_seed(seed)) - 0.1


def test_decode_denormalises_as_diffusers_by_hand():
    vae = IdentityVAE(VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR)
    z = small_latents(0)
    got = decode_latents(vae, z)
    x = z[:, :3] / VAE_SCALING_FACTOR + VAE_SHIFT_FACTOR  # latents / scaling_factor + shift_factor
    expected = (x * 0.5 + 0.5).clamp(0, 1)
    assert got.dtype == torch.float32
    assert_bit_equal(got, expected)
    assert expected.min() > 0 and expected.max() < 1  # nothing clamped


def test_decode_reads_the_factors_from_the_vae_config():
    z = small_latents(1)
    got = decode_latents(IdentityVAE(0.5, -0.25), z)
    assert_bit_equal(got, ((z[:, :3] / 0.5 - 0.25) * 0.5 + 0.5).clamp(0, 1))


def test_decode_equals_zimage_pipeline_decode(tiny_checkpoint):
    """The tiny VAE (its config has the FLUX factors), decoded as ZImagePipeline does for output_type="pt"."""
    vae = checkpoint.load_vae(tiny_checkpoint, "cpu", torch.float32)
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (VAE_SCALING_FACTOR, VAE_SHIFT_FACTOR)
    latents = torch.randn((2, 16, 8, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        z = latents.to(vae.dtype)
        z = (z / vae.config.scaling_factor) + vae.config.shift_factor
        image = vae.decode(z, return_dict=False)[0]
        expected = VaeImageProcessor(vae_scale_factor=16).postprocess(image, output_type="pt")
    got = decode_latents(vae, latents)
    assert got.shape == (2, 3, 64, 64)
    assert_bit_equal(got, expected)

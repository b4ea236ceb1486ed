"""FID's Inception-v3 feature extractor (the TF-ported 2015-12-05 graph) in plain torch, without torch-fidelity.

A port of torch-fidelity 0.4.0's ``torch_fidelity/feature_extractor_inceptionv3.py`` and
``interpolate_compat_tensorflow.py`` (Copyright Anton Obukhov et al., Apache License 2.0; its network code is
adapted in turn from pytorch-fid, Apache License 2.0, and its weights were converted from TensorFlow's, Apache
License 2.0). A port rather than the package: torch-fidelity's ``__init__`` imports torchvision, whose only wheel
for torch 2.13 is a CUDA build that cannot be imported next to llm-dit's CPU torch, although the extractor itself
is plain torch. The blocks, module names and forward pass are torch-fidelity's, so its state dict loads key for key;
the features go only as far as FID and KID need (pool3).

The convention is torch-fidelity's, which torchmetrics' FID and KID use too: the weights file
``weights-inception-2015-12-05-6726825d.pth``, the state dict torch-fidelity downloads from its v0.2.0 release
(``fc.weight`` / ``fc.bias``, the 1008-class head, are accepted and ignored); 8-bit RGB images in, each resized to
299x299, mapped to ``(x - 128) / 128`` and passed through the network; out, the 2048-dim average-pooled features
(``"2048"`` in torch-fidelity, pool3 in TensorFlow), one row per image. Two resizes: ``"tf1"`` is torch-fidelity's
TensorFlow-1.x-exact bilinear resize (what its extractor does; no antialiasing), ``"antialias"`` (the default) is
torch's antialiased bilinear resize, as torchmetrics' ``antialias=True``: images here are 256 to 1024 px, and
downsampling those without antialiasing aliases. FIDs computed with different resizes are not comparable.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from llm_dit.errors import LlmDitError, did_you_mean
from llm_dit.metrics.distribution import INCEPTION_FEATURE_DIM, check_inception_weights
from llm_dit.metrics.distribution import INCEPTION_FIX as _FIX
from llm_dit.metrics.lpips import _ieee_fp32
from llm_dit.metrics.pixel import ImageLike, load_rgb
from llm_dit.metrics.state_dicts import matching_tensors, read_state_dict
from llm_dit.models.devices import resolve_device

RESIZE_MODES = ("antialias", "tf1")
FEATURE_DIM = INCEPTION_FEATURE_DIM
INPUT_SIZE = 299  # torch-fidelity's FeatureExtractorInceptionV3.INPUT_IMAGE_SIZE

# Keys of torch-fidelity's state dict that the pool3 features do not use: the logits layer.
_IGNORED_KEYS = frozenset({"fc.weight", "fc.bias"})


# ------------------------------------------------------------------------------------------------ the network
# torch-fidelity's blocks (themselves torchvision's, patched to match the TensorFlow graph), same names and order.


class _BasicConv2d(nn.Module):
    """Convolution without bias, batch norm (eps 0.001), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


def _avg_pool_tf(x: torch.Tensor) -> torch.Tensor:
    """TensorFlow's 3x3 average pool: the padded zeros do not count in the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch5x5_1 = _BasicConv2d(in_channels, 48, kernel_size=1)
        self.branch5x5_2 = _BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _BasicConv2d(in_channels, pool_features, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class _InceptionB(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(in_channels, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3(x)
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch3x3dbl, branch_pool], 1)


class _InceptionC(nn.Module):
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(in_channels, c7, kernel_size=1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = self.branch7x7dbl_1(x)
        branch7x7dbl = self.branch7x7dbl_3(self.branch7x7dbl_2(branch7x7dbl))
        branch7x7dbl = self.branch7x7dbl_5(self.branch7x7dbl_4(branch7x7dbl))
        branch_pool = self.branch_pool(_avg_pool_tf(x))
        return torch.cat([branch1x1, branch7x7, branch7x7dbl, branch_pool], 1)


class _InceptionD(nn.Module):
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = _BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_2(self.branch7x7x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(branch7x7x3))
        branch_pool = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([branch3x3, branch7x7x3, branch_pool], 1)


class _InceptionE(nn.Module):
    """torch-fidelity's InceptionE_1 (``max_pool=False``) and InceptionE_2 (``max_pool=True``: the TensorFlow
    graph's last block max-pools its pool branch where the paper average-pools)."""

    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = _BasicConv2d(in_channels, 320, kernel_size=1)
        self.branch3x3_1 = _BasicConv2d(in_channels, 384, kernel_size=1)
        self.branch3x3_2a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(in_channels, 448, kernel_size=1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(in_channels, 192, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch1x1 = self.branch1x1(x)
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = torch.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = torch.cat([self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_tf(x)
        branch_pool = self.branch_pool(pooled)
        return torch.cat([branch1x1, branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionV3Pool(nn.Module):
    """torch-fidelity's FeatureExtractorInceptionV3 up to its ``"2048"`` features (no ``fc``): normalised
    ``[N, 3, 299, 299]`` input (``(x - 128) / 128`` of 8-bit levels) -> ``[N, 2048]``."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, max_pool=False)
        self.Mixed_7c = _InceptionE(2048, max_pool=True)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x 3 x 299 x 299 -> N x 64 x 73 x 73 -> N x 192 x 35 x 35
        x = self.MaxPool_1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        x = self.MaxPool_2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        # -> N x 288 x 35 x 35 -> N x 768 x 17 x 17
        x = self.Mixed_6a(self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x))))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(x))))
        # -> N x 1280 x 8 x 8 -> N x 2048 x 8 x 8 -> N x 2048
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return torch.flatten(self.AvgPool(x), 1)


def build_network() -> InceptionV3Pool:
    """A fresh, randomly initialised network in torch-fidelity's layout (its state dict, less ``fc``)."""
    return InceptionV3Pool()


# ------------------------------------------------------------------------------------------------ preprocessing


def resize_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x(x, size, align_corners=False)`` (its "slow",
    CPU bit-exact method): TensorFlow 1.x's bilinear resize of float ``[N, C, H, W]`` to ``size`` (height, width).

    Output pixel i samples the input at ``i * (in / out)``, the scale rounded to float32 as TensorFlow does (no
    half-pixel offset, no antialiasing), interpolating between that floor and the next pixel (clamped at the edge).
    """
    if x.dim() != 4 or not torch.is_floating_point(x):
        raise LlmDitError(f"inception: resize_tf1 needs a float [N, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")

    def grid(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scale = torch.tensor(in_size / out_size, dtype=torch.float32, device=x.device)
        position = torch.arange(0, out_size, 1, dtype=x.dtype, device=x.device) * scale
        lo = position.long()
        hi = (lo + 1).clamp_max(in_size - 1)
        return lo, hi, position - lo.float()

    out_h, out_w = size
    x_lo, x_hi, dx = grid(x.shape[3], out_w)
    y_lo, y_hi, dy = grid(x.shape[2], out_h)
    rows_lo, rows_hi = x[:, :, y_lo, :], x[:, :, y_hi, :]
    in_00, in_01 = rows_lo[:, :, :, x_lo], rows_lo[:, :, :, x_hi]
    in_10, in_11 = rows_hi[:, :, :, x_lo], rows_hi[:, :, :, x_hi]
    in_0 = in_00 + (in_01 - in_00) * dx.view(1, 1, 1, out_w)
    in_1 = in_10 + (in_11 - in_10) * dx.view(1, 1, 1, out_w)
    return in_0 + (in_1 - in_0) * dy.view(1, 1, out_h, 1)


def resize_antialias(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch's antialiased bilinear resize (half-pixel centres), as torchmetrics' FID with ``antialias=True``."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


_RESIZES = {"antialias": resize_antialias, "tf1": resize_tf1}


# ------------------------------------------------------------------------------------------------ weights


def _load_network(path: Path) -> InceptionV3Pool:
    """The network with every parameter and buffer loaded from torch-fidelity's state dict file at ``path``.

    ``load_state_dict(strict=True)``'s checks, made here so that each failure is one line naming the key: every
    key of the network present with its shape, and no key besides them and ``fc.*``. A batch norm's
    ``num_batches_tracked`` (unused in evaluation) may be absent, as in files saved before torch 0.4.1, which
    torch's own strict loading accepts too.
    """
    state = read_state_dict(path, "inception", "weights file", _FIX)
    with torch.device("meta"):  # shapes only: every tensor is replaced by the file's
        network = build_network()
    # Any other key means another network (torchvision's Inception3 has AuxLogits.*).
    loaded = matching_tensors(
        state, network.state_dict(), path=path, metric="inception", noun="weights file", needs="the network",
        fix=_FIX, ignored=_IGNORED_KEYS,
        default=lambda name: torch.zeros((), dtype=torch.long) if name.endswith(".num_batches_tracked") else None,
    )  # fmt: skip
    network.load_state_dict(loaded, strict=True, assign=True)
    return network.eval().requires_grad_(False)


# ------------------------------------------------------------------------------------------------ the extractor


class InceptionFeatures:
    """FID's 2048-dim Inception-v3 pool3 features of images (torch-fidelity's convention). Build with from_weights.

    Always computed in float32 (whatever the metrics' torch_dtype), with TF32 off on CUDA; returned as float64.
    """

    def __init__(self, network: InceptionV3Pool, device: torch.device, batch_size: int, resize: str) -> None:
        self.device = device
        self.batch_size = batch_size
        self.resize = resize
        self._network: InceptionV3Pool | None = network.to(device)
        self._dtype = torch.float32

    @classmethod
    def from_weights(
        cls, path: str | Path, device: str = "auto", batch_size: int = 16, resize: str = "antialias"
    ) -> InceptionFeatures:
        """Load the network from a local copy of torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``.

        ``resize``: ``"antialias"`` (torch's antialiased bilinear, the default) or ``"tf1"`` (torch-fidelity's
        TensorFlow-1.x bilinear); ``batch_size``: images per network forward (does not change the values).
        """
        if resize not in RESIZE_MODES:
            raise LlmDitError(
                f"inception: unknown resize mode {resize!r}{did_you_mean(str(resize), RESIZE_MODES)}; "
                f"use {' or '.join(RESIZE_MODES)}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise LlmDitError(f"inception: batch_size must be an integer of at least 1, got {batch_size!r}")
        target = check_inception_weights(path)
        resolved = resolve_device(device)
        return cls(_load_network(target), resolved, batch_size, resize)

    def features(self, images: Sequence[ImageLike]) -> np.ndarray:
        """The ``[len(images), 2048]`` float64 features, row i for ``images[i]``.

        Images are paths, PIL images or 8-bit RGB arrays ``[H, W, 3]`` (see pixel.load_rgb), of any sizes: each is
        resized to 299x299 on its own, then up to batch_size of them go through the network together. They are
        read one batch at a time, so a long sequence of paths is never all in memory.
        """
        if self._network is None:
            raise LlmDitError("inception: the model was unloaded; create a new InceptionFeatures with from_weights")
        if isinstance(images, (str, Path, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim != 4):
            raise LlmDitError("inception: features() takes a sequence of images, got one image; pass [image]")
        rows: list[torch.Tensor] = []
        with torch.inference_mode(), _ieee_fp32(self.device):
            for start in range(0, len(images), self.batch_size):
                chunk = images[start : start + self.batch_size]
                batch = torch.cat([self._preprocess(load_rgb(image)) for image in chunk])
                rows.append(self._network(batch).to(torch.float64).cpu())
        if not rows:
            return np.zeros((0, FEATURE_DIM), dtype=np.float64)
        return torch.cat(rows).numpy()

    def unload(self) -> None:
        """Free the network (and cached GPU memory); features cannot be computed afterwards."""
        self._network = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _preprocess(self, array: np.ndarray) -> torch.Tensor:
        """uint8 RGB ``[H, W, 3]`` -> the network's ``[1, 3, 299, 299]`` input: resized, then ``(x - 128) / 128``."""
        x = torch.from_numpy(array.copy()).to(self.device)  # moved as uint8: 4x less to copy
        x = x.permute(2, 0, 1).unsqueeze(0).to(self._dtype)
        x = _RESIZES[self.resize](x, (INPUT_SIZE, INPUT_SIZE))
        return (x - 128) / 128

"""LPIPS perceptual distance (Zhang et al. 2018) in plain torch, without the lpips package or torchvision.

The computation is lpips 0.1.4's ``LPIPS(net, version="0.1", lpips=True, spatial=False)`` on inputs in [-1, 1]:
lpips' input scaling, the torchvision AlexNet / VGG16 ``features`` stack tapped at the same five ReLU outputs,
unit-normalised channels (eps 1e-10), squared differences weighted by lpips' learned 1x1 linear layers (no bias),
averaged over space and summed over layers. The linear weights ship with llm-dit (``llm_dit/data/lpips``,
BSD-2-Clause, from lpips 0.1.4); the backbone is torchvision's ImageNet weights file, given as a local path.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llm_dit.errors import LlmDitError
from llm_dit.metrics.pixel import ImageLike, load_rgb
from llm_dit.metrics.state_dicts import matching_tensors, read_state_dict
from llm_dit.models.devices import resolve_device

NETS = ("alex", "vgg")

# lpips' ScalingLayer: maps [-1, 1] inputs to ImageNet-normalised ones (shift = (mean - 0.5) / 0.5, scale = std / 0.5).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # lpips.normalize_tensor's eps

# torchvision's VGG16 configuration "D": conv channels per stage, each stage closed by a 2x2 max-pool.
_VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``AlexNet().features`` (same layers, same indices)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


def _vgg16_features() -> nn.Sequential:
    """torchvision's ``vgg16().features`` (configuration D, no batch norm; same layers, same indices)."""
    layers: list[nn.Module] = []
    channels = 3
    for stage in _VGG16_STAGES:
        for width in stage:
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class _NetSpec:
    build: Callable[[], nn.Sequential]
    taps: tuple[int, ...]  # features indices whose outputs lpips compares (its slice ends)
    channels: tuple[int, ...]  # channels at those taps = the lin layers' inputs
    weights_file: str  # torchvision's file name, for messages
    min_side: int  # smallest image side that still gives a non-empty last tap


_NETS: dict[str, _NetSpec] = {
    # lpips/pretrained_networks.py: alexnet slices end at features[1], [4], [7], [9], [11] (relu1..relu5);
    # vgg16 slices end at [3], [8], [15], [22], [29] (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
    "alex": _NetSpec(_alexnet_features, (1, 4, 7, 9, 11), (64, 192, 384, 256, 256), "alexnet-owt-7be5be79.pth", 31),
    "vgg": _NetSpec(_vgg16_features, (3, 8, 15, 22, 29), (64, 128, 256, 512, 512), "vgg16-397923af.pth", 16),
}


def build_features(net: str) -> nn.Sequential:
    """A fresh, randomly initialised backbone stack equal to torchvision's ``features`` of ``net`` (alex | vgg)."""
    return _spec(net).build()


def _spec(net: str) -> _NetSpec:
    if net not in _NETS:
        raise LlmDitError(f"lpips: unknown net {net!r}; set lpips_net in [default.metrics] to alex or vgg")
    return _NETS[net]


def _fix(spec: _NetSpec, net: str) -> str:
    return f"set lpips_backbone in [default.metrics] to torchvision's {spec.weights_file} (lpips_net = {net!r})"


def _load_backbone(path: Path, net: str) -> nn.Sequential:
    """The features stack of ``net`` with every parameter loaded from a torchvision state dict (full or features)."""
    spec = _NETS[net]
    state = read_state_dict(path, "lpips", "backbone weights file", _fix(spec, net))
    features = spec.build()
    # A features key the stack lacks means another architecture (e.g. vgg16_bn).
    loaded = matching_tensors(
        state, features.state_dict(), path=path, metric="lpips", noun="backbone weights file", needs=net,
        fix=_fix(spec, net), prefix="features.",
    )  # fmt: skip
    features.load_state_dict(loaded, strict=True)
    return features.eval().requires_grad_(False)


def _load_lins(net: str) -> list[torch.Tensor]:
    """lpips v0.1's packaged linear-layer weights of ``net``: one (1, C, 1, 1) weight per tap."""
    name = f"llm_dit/data/lpips/{net}.pth"
    try:
        data = (resources.files("llm_dit") / "data" / "lpips" / f"{net}.pth").read_bytes()
    except FileNotFoundError as exc:  # pragma: no cover - shipped as package data
        raise LlmDitError(f"lpips: {name} is missing from the installation; reinstall llm-dit") from exc
    state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    weights = []
    for k, channels in enumerate(_NETS[net].channels):
        w = state.get(f"lin{k}.model.1.weight")
        if not isinstance(w, torch.Tensor) or w.shape != (1, channels, 1, 1):  # pragma: no cover - shipped file
            raise LlmDitError(f"lpips: {name} lacks lin{k}.model.1.weight of shape (1, {channels}, 1, 1); reinstall")
        weights.append(w.float())
    return weights


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """Full float32 convolutions. cuDNN defaults to TF32; measured on an H200, TF32 put LPIPS up to 7e-6 away
    from the CPU value, full float32 1.5e-8, so GPU and CPU results stay interchangeable."""
    if device.type != "cuda":
        yield
        return
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = previous


class LpipsDistance:
    """LPIPS v0.1 distance between image pairs (0 = identical; larger = more different). Build with from_weights.

    Always computed in float32 (whatever the metrics' torch_dtype), with TF32 off on CUDA.
    """

    def __init__(
        self, net: str, features: nn.Sequential, lins: Sequence[torch.Tensor], device: torch.device, batch_size: int
    ) -> None:
        self.net = net
        self.device = device
        self.batch_size = batch_size
        self._features: nn.Sequential | None = features.to(device)
        self._lins: list[torch.Tensor] | None = [w.to(device) for w in lins]
        self._shift = torch.tensor(_SHIFT, dtype=torch.float32, device=device).view(1, 3, 1, 1)
        self._scale = torch.tensor(_SCALE, dtype=torch.float32, device=device).view(1, 3, 1, 1)

    @staticmethod
    def check_backbone(path: str | Path, net: str = "alex") -> Path:
        """Check that ``net`` is known and ``path`` is a file (loads nothing); returns the expanded path.

        Raises LlmDitError naming the path and the torchvision file lpips_backbone should point at.
        """
        spec = _spec(net)
        target = Path(path).expanduser()
        if not target.exists():
            raise LlmDitError(f"lpips: backbone weights file {target} not found; {_fix(spec, net)}")
        if not target.is_file():
            raise LlmDitError(f"lpips: backbone weights file {target} is not a file; {_fix(spec, net)}")
        return target

    @classmethod
    def from_weights(
        cls, backbone: str | Path, net: str = "alex", device: str = "auto", batch_size: int = 16
    ) -> LpipsDistance:
        """Load ``net``'s backbone from a local torchvision ImageNet weights file plus the packaged lin weights."""
        path = cls.check_backbone(backbone, net)
        if batch_size < 1:
            raise LlmDitError(f"lpips: batch_size must be at least 1, got {batch_size}; set batch_size in [metrics]")
        resolved = resolve_device(device)
        return cls(net, _load_backbone(path, net), _load_lins(net), resolved, batch_size)

    def distance(self, a: Sequence[ImageLike], b: Sequence[ImageLike]) -> list[float]:
        """LPIPS of ``a[i]`` vs ``b[i]`` for every i; each pair must share its size (pairs may differ from others).

        Images are paths, PIL images or 8-bit RGB arrays ``[H, W, 3]`` (see pixel.load_rgb).
        """
        if self._features is None:
            raise LlmDitError("lpips: the model was unloaded; create a new LpipsDistance with from_weights")
        if len(a) != len(b):
            raise LlmDitError(f"lpips: got {len(a)} images and {len(b)} references; pass one reference per image")
        xs = [load_rgb(image) for image in a]
        ys = [load_rgb(image) for image in b]
        # Batches need one size, so pairs are grouped by size; results go back to their input positions.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            if x.shape != y.shape:
                raise LlmDitError(
                    f"lpips: images differ in size ({x.shape[1]}x{x.shape[0]} vs {y.shape[1]}x{y.shape[0]}); "
                    "compare images generated at the same width and height"
                )
            height, width = x.shape[:2]
            if min(height, width) < _NETS[self.net].min_side:
                side = _NETS[self.net].min_side
                raise LlmDitError(
                    f"lpips ({self.net}) needs images of at least {side}x{side} pixels, got {width}x{height}"
                )
            groups.setdefault((height, width), []).append(i)
        out = [0.0] * len(xs)
        with torch.inference_mode(), _ieee_fp32(self.device):
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    values = self._forward(self._tensor([xs[i] for i in chunk]), self._tensor([ys[i] for i in chunk]))
                    for i, value in zip(chunk, values.tolist(), strict=True):
                        out[i] = float(value)
        return out

    def unload(self) -> None:
        """Free the backbone (and cached GPU memory); the distance cannot be computed afterwards."""
        self._features = None
        self._lins = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _tensor(self, arrays: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB ``[H, W, 3]`` arrays -> float32 ``[N, 3, H, W]`` in [-1, 1] (lpips.im2tensor's mapping)."""
        batch = torch.from_numpy(np.stack(arrays)).to(self.device)  # move as uint8: 4x less to copy
        return batch.permute(0, 3, 1, 2).float() / 127.5 - 1.0

    def _forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-pair LPIPS ``[N]``. Both inputs go through the backbone as one batch; each tap's contribution is
        added as soon as it is reached, so only the current activation is held."""
        assert self._features is not None and self._lins is not None
        n = x.shape[0]
        taps = dict(zip(_NETS[self.net].taps, self._lins, strict=True))
        h = (torch.cat([x, y]) - self._shift) / self._scale
        total = torch.zeros(n, dtype=torch.float32, device=self.device)
        for index in range(max(taps) + 1):  # layers after the last tap do not count
            h = self._features[index](h)
            weight = taps.get(index)
            if weight is not None:
                feats = h / (torch.sqrt(torch.sum(h**2, dim=1, keepdim=True)) + _EPS)
                diff = (feats[:n] - feats[n:]) ** 2
                total = total + F.conv2d(diff, weight).mean(dim=(2, 3)).flatten()
        return total

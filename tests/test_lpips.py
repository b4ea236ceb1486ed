"""LPIPS: the plain-torch port against lpips 0.1.4's own code, plus loading and input checks.

No real ImageNet backbone is available offline, so backbones are random but fixed (seeded) layer stacks saved
in torchvision's key layout; the linear-layer weights are the real ones packaged with llm-dit.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import re
import shutil
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn

from bounds import EPS64, lpips_bound, worst_case
from llm_dit.config import MetricsSettings
from llm_dit.errors import LlmDitError
from llm_dit.metrics.compute import weights_key
from llm_dit.metrics.lpips import LpipsDistance, build_features
from llm_dit.metrics.registry import select_metrics
from llm_dit.models import checkpoint
from metrics_helpers import textured_image as _image

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads


def _bound(net: str, value: float) -> float:
    """How far rounding can move one float32 LPIPS value (bounds.lpips_bound)."""
    return lpips_bound(net, value)


def _bound64(net: str, value: float) -> float:
    """The same for a float64 evaluation, with the worst-case n * eps64 per tap."""
    return lpips_bound(net, value, error=lambda n: worst_case(n, EPS64))


def _random_features(net: str, seed: int) -> nn.Sequential:
    """A seeded backbone with variance-preserving weights, so deep taps still depend on the image."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        features = build_features(net)
        for module in features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.normal_(module.bias, std=0.01)
    return features.eval()


def _save(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save(state, path)
    return path


def _features_state(net: str, seed: int) -> dict[str, torch.Tensor]:
    return {f"features.{k}": v for k, v in _random_features(net, seed).state_dict().items()}


@pytest.fixture(scope="module")
def alex_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save(tmp_path_factory.mktemp("lpips") / "alex-a.pth", _features_state("alex", 0))


@pytest.fixture(scope="module")
def alex(alex_file: Path) -> LpipsDistance:
    return LpipsDistance.from_weights(alex_file, "alex", device="cpu", batch_size=8)


def _noisy(image: Image.Image, sigma: float, seed: int = 99) -> Image.Image:
    array = np.asarray(image).astype(np.float64)
    noise = np.random.default_rng(seed).normal(0, sigma, array.shape)
    return Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------ values


def test_identical_images_are_zero(alex: LpipsDistance) -> None:
    images = [_image(1), _image(2)]
    # The copies go through the backbone at other batch positions: at most the bound's quadratic term (~1e-9).
    values = alex.distance(images, [im.copy() for im in images])
    assert all(0.0 <= v <= _bound("alex", 0.0) for v in values), values


def test_distortions_are_positive_and_ordered(alex: LpipsDistance) -> None:
    image = _image(3)
    slight, strong, blurred = alex.distance(
        [image] * 3, [_noisy(image, 4), _noisy(image, 40), image.filter(ImageFilter.GaussianBlur(2))]
    )
    # Each distortion registers beyond what rounding could produce, and the stronger noise by a margin larger than
    # both values' rounding.
    assert all(v > _bound("alex", v) for v in (slight, strong, blurred)), (slight, strong, blurred)
    assert strong - slight > _bound("alex", slight) + _bound("alex", strong)


def test_batch_size_does_not_change_values(alex_file: Path) -> None:
    # Mixed sizes: batches are grouped by size and results must come back in input order.
    a = [_image(10), _image(11, 48, 40), _image(12), _image(13, 48, 40), _image(14)]
    b = [_noisy(im, 8 + 8 * i, seed=i) for i, im in enumerate(a)]  # more noise for each: distinct values
    one = LpipsDistance.from_weights(alex_file, "alex", device="cpu", batch_size=1).distance(a, b)
    eight = LpipsDistance.from_weights(alex_file, "alex", device="cpu", batch_size=8).distance(a, b)
    # Other batch shapes: each value within both evaluations' rounding (2 x the bound)...
    bounds = [_bound("alex", v) for v in one]
    assert all(abs(x - y) <= 2 * e for x, y, e in zip(eight, one, bounds, strict=True)), (eight, one, bounds)
    # ...and the values lie further apart than that, so a reordering would show.
    ordered = sorted(one)
    assert min(hi - lo for lo, hi in itertools.pairwise(ordered)) > 4 * max(bounds)
    assert LpipsDistance.from_weights(alex_file, "alex", device="cpu").distance([], []) == []


def test_backbone_weights_are_used(tmp_path: Path, alex_file: Path, alex: LpipsDistance) -> None:
    other_file = _save(tmp_path / "b.pth", _features_state("alex", 1))
    other = LpipsDistance.from_weights(other_file, "alex", device="cpu")
    a, b = [_image(20), _image(21)], [_image(22), _image(23)]
    mine, theirs = alex.distance(a, b), other.distance(a, b)
    # Other weights, other values: apart by more than both values' rounding.
    assert all(abs(x - y) > _bound("alex", x) + _bound("alex", y) for x, y in zip(mine, theirs, strict=True))
    # The metrics pass keys stored values by the file's fingerprint: other weights, another key.
    assert weights_key(other_file) != weights_key(alex_file)
    assert re.fullmatch(r"[0-9a-f]{16}", weights_key(alex_file))


def test_weights_key_of_a_file_is_that_of_a_folder_holding_it(tmp_path: Path, alex_file: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    shutil.copy(alex_file, folder / alex_file.name)
    key = weights_key(alex_file)
    assert key == checkpoint.fingerprint(folder) == checkpoint.fingerprint(folder / alex_file.name)
    # The key stored by earlier versions (sha256 of "name\0size\0", the first and the last MiB) still matches.
    data = alex_file.read_bytes()
    assert len(data) > 2 << 20  # head and tail both count
    legacy = hashlib.sha256(f"{alex_file.name}\0{len(data)}\0".encode() + data[: 1 << 20] + data[-(1 << 20) :])
    assert key == legacy.hexdigest()[:16]
    with pytest.raises(
        LlmDitError, match=r"metric weights .*nope\.pth do not exist; fix the path in \[default\.metrics\]"
    ):
        weights_key(tmp_path / "nope.pth")


def test_arrays_paths_and_pil_images_give_the_same_distance(tmp_path: Path, alex: LpipsDistance) -> None:
    a, b = _image(24), _noisy(_image(24), 20)
    b.save(tmp_path / "b.png")
    # One pair per call: the same pixels in the same batch shape, literally the same computation (bit-equal).
    pairs = [(a, b), (np.asarray(a), np.asarray(b)), (np.asarray(a.convert("RGBA")), tmp_path / "b.png")]
    values = [alex.distance([x], [y])[0] for x, y in pairs]
    assert values == [values[0]] * 3


def test_full_torchvision_state_dict_loads(tmp_path: Path, alex: LpipsDistance) -> None:
    classifier = {"classifier.1.weight": torch.zeros(4, 9216), "classifier.1.bias": torch.zeros(4)}
    state = _features_state("alex", 0) | classifier
    full = LpipsDistance.from_weights(_save(tmp_path / "full.pth", state), "alex", device="cpu")
    a, b = [_image(30)], [_image(31)]
    assert full.distance(a, b) == alex.distance(a, b)  # the same tensors loaded, the same computation


# ------------------------------------------------------------------------------------------------ errors


def test_size_mismatch_names_both_sizes(alex: LpipsDistance) -> None:
    with pytest.raises(LlmDitError, match=r"80x64 vs 48x40"):
        alex.distance([_image(1)], [_image(1, 48, 40)])
    with pytest.raises(LlmDitError, match="at least 31x31"):
        alex.distance([_image(1, 30, 40)], [_image(2, 30, 40)])
    with pytest.raises(LlmDitError, match="2 images and 1 references"):
        alex.distance([_image(1), _image(2)], [_image(1)])


def test_missing_backbone_file(tmp_path: Path) -> None:
    with pytest.raises(LlmDitError, match=r"not found.*alexnet-owt-7be5be79\.pth"):
        LpipsDistance.from_weights(tmp_path / "nope.pth", "alex")
    with pytest.raises(LlmDitError, match=r"not found.*vgg16-397923af\.pth"):
        LpipsDistance.from_weights(tmp_path / "nope.pth", "vgg")
    with pytest.raises(LlmDitError, match="unknown net 'squeeze'"):
        LpipsDistance.from_weights(tmp_path / "nope.pth", "squeeze")
    with pytest.raises(LlmDitError, match=r"is not a file; set lpips_backbone"):
        LpipsDistance.from_weights(tmp_path, "alex")


def test_check_weights_refuses_a_bad_backbone_before_loading(tmp_path: Path, alex_file: Path) -> None:
    # select_metrics checks the file exists (LpipsDistance.check_backbone) and loads nothing.
    for path, problem in ((tmp_path / "nope.pth", "not found"), (tmp_path, "is not a file")):
        settings = MetricsSettings(lpips_backbone=str(path), lpips_net="vgg")
        with pytest.raises(
            LlmDitError, match=rf"{re.escape(str(path))} {problem}; set lpips_backbone .*vgg16-397923af"
        ):
            select_metrics(["lpips"], settings)
    assert [s.name for s in select_metrics(["diversity_lpips"], MetricsSettings(lpips_backbone=str(alex_file)))[0]] == [
        "diversity_lpips"
    ]


def test_zip_and_legacy_torch_files_load(tmp_path: Path, alex: LpipsDistance) -> None:
    # torch.save's zip format is memory-mapped; older (pre-1.6, legacy pickle) files, as some torchvision
    # weights are, are read whole. Both give the same model.
    legacy = tmp_path / "legacy.pth"
    torch.save(_features_state("alex", 0), legacy, _use_new_zipfile_serialization=False)
    a, b = [_image(32)], [_image(33)]
    assert LpipsDistance.from_weights(legacy, "alex", device="cpu").distance(a, b) == alex.distance(a, b)


def test_missing_key(tmp_path: Path) -> None:
    state = _features_state("alex", 0)
    del state["features.3.weight"]
    with pytest.raises(LlmDitError, match=r"no tensor features\.3\.weight.*alexnet-owt-7be5be79\.pth"):
        LpipsDistance.from_weights(_save(tmp_path / "x.pth", state), "alex", device="cpu")


def test_wrong_shapes(tmp_path: Path) -> None:
    state = _features_state("alex", 0)
    state["features.8.bias"] = torch.zeros(255)
    with pytest.raises(LlmDitError, match=r"features\.8\.bias .* shape \(255,\) but alex needs \(256,\)"):
        LpipsDistance.from_weights(_save(tmp_path / "x.pth", state), "alex", device="cpu")
    # A VGG16 file read as AlexNet: the first conv already differs.
    vgg_file = _save(tmp_path / "vgg.pth", _features_state("vgg", 0))
    with pytest.raises(LlmDitError, match=r"features\.0\.weight .* \(64, 3, 3, 3\) but alex needs \(64, 3, 11, 11\)"):
        LpipsDistance.from_weights(vgg_file, "alex", device="cpu")


def test_other_architecture_and_unreadable_files(tmp_path: Path) -> None:
    state = _features_state("alex", 0) | {"features.1.running_mean": torch.zeros(64)}  # e.g. a batch-norm variant
    with pytest.raises(LlmDitError, match=r"unexpected features\.1\.running_mean"):
        LpipsDistance.from_weights(_save(tmp_path / "bn.pth", state), "alex", device="cpu")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(LlmDitError, match="cannot read backbone weights file"):
        LpipsDistance.from_weights(garbage, "alex", device="cpu")
    with pytest.raises(LlmDitError, match="holds no state dict"):
        LpipsDistance.from_weights(_save(tmp_path / "list.pth", [torch.zeros(1)]), "alex", device="cpu")  # type: ignore[arg-type]


def test_unload(alex_file: Path) -> None:
    model = LpipsDistance.from_weights(alex_file, "alex", device="cpu")
    model.unload()
    with pytest.raises(LlmDitError, match="unloaded"):
        model.distance([_image(1)], [_image(2)])


# ------------------------------------------------------------------------------------------------ reference


@pytest.fixture(scope="module")
def lpips_package() -> Iterator[tuple[Any, types.ModuleType]]:
    """The real lpips package, imported with a stand-in ``torchvision`` (absent here: its wheel needs CUDA torch).

    The stand-in replaces only torchvision's pretrained-weights loader: its ``models.alexnet`` / ``models.vgg16``
    return an object whose ``.features`` is set per test. Everything under test on the lpips side (scaling,
    slicing, normalisation, lin layers and their packaged weights, averaging) is lpips' own code.
    """
    if importlib.util.find_spec("lpips") is None:
        pytest.skip("lpips is not installed (pip install --no-deps lpips==0.1.4)")
    models = types.ModuleType("torchvision.models")
    torchvision = types.ModuleType("torchvision")
    torchvision.models = models  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torchvision", torchvision)
        mp.setitem(sys.modules, "torchvision.models", models)
        # lpips must be imported fresh against the stand-in, and forgotten afterwards.
        for name in [n for n in sys.modules if n == "lpips" or n.startswith("lpips.")]:
            mp.delitem(sys.modules, name)
        before = set(sys.modules)
        try:
            import lpips

            yield lpips, models
        finally:
            for name in set(sys.modules) - before:
                if name == "lpips" or name.startswith("lpips."):
                    del sys.modules[name]


def _reference(lpips_package: tuple[Any, types.ModuleType], mp: pytest.MonkeyPatch, net: str, seed: int) -> Any:
    lpips, models = lpips_package
    calls: list[dict[str, Any]] = []

    def factory(*args: Any, pretrained: Any = None, weights: Any = None, **kwargs: Any) -> types.SimpleNamespace:
        calls.append({"pretrained": pretrained, "weights": weights})
        return types.SimpleNamespace(features=_random_features(net, seed))

    mp.setattr(models, "alexnet" if net == "alex" else "vgg16", factory, raising=False)
    model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=False, spatial=False, verbose=False)
    assert calls, "lpips did not build its backbone through torchvision.models"
    return model.eval()


def _in_float64(model: LpipsDistance) -> LpipsDistance:
    """``model`` computing in float64 throughout, inputs included (white-box: it casts the port's float32 parts;
    the computation is unchanged), so that its formula can be compared with lpips' far below float32 noise."""
    assert model._features is not None and model._lins is not None
    model._features = model._features.double()
    model._lins = [w.double() for w in model._lins]
    model._shift, model._scale = model._shift.double(), model._scale.double()

    def to_tensor(arrays: list[np.ndarray]) -> torch.Tensor:
        # lpips.im2tensor's mapping, image / (255 / 2) - 1, in float64 (the port's own rounds to float32 first).
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).double() / 127.5 - 1.0

    model._tensor = to_tensor  # type: ignore[method-assign]
    return model


@pytest.mark.parametrize(("net", "width", "height"), [("alex", 96, 72), ("vgg", 40, 32)])
def test_matches_lpips_package(
    lpips_package: tuple[Any, types.ModuleType], tmp_path: Path, net: str, width: int, height: int
) -> None:
    lpips = lpips_package[0]
    base = [_image(40, width, height), _image(41, width, height), _image(42, width, height)]
    a = [*base, base[0]]
    b = [_noisy(base[0], 10), base[1].filter(ImageFilter.GaussianBlur(1.5)), _image(43, width, height), base[0]]
    path = _save(tmp_path / f"{net}.pth", _features_state(net, 5))
    with pytest.MonkeyPatch.context() as mp:
        reference = _reference(lpips_package, mp, net, seed=5)
        with torch.inference_mode():
            x = torch.cat([lpips.im2tensor(np.asarray(im)) for im in a])
            y = torch.cat([lpips.im2tensor(np.asarray(im)) for im in b])
            expected = reference(x, y).flatten().tolist()
            reference = reference.double()
            x64, y64 = ([torch.from_numpy(np.asarray(im) / 127.5 - 1.0).permute(2, 0, 1) for im in s] for s in (a, b))
            expected64 = reference(torch.stack(x64), torch.stack(y64)).flatten().tolist()
    # A non-trivial comparison: three values far above the float32 tolerance below, one of identical images.
    assert all(v > 20 * _bound(net, v) for v in expected[:3]) and 0.0 <= expected[3] <= _bound(net, 0.0), expected
    # The production path (float32, our batch of 3 against lpips' 4): within both evaluations' rounding.
    ours = LpipsDistance.from_weights(path, net, device="cpu", batch_size=3).distance(a, b)
    for got, want in zip(ours, expected, strict=True):
        assert abs(got - want) <= 2 * _bound(net, want), (ours, expected)
    # The formula, in float64 on identical inputs: within the float64 bound, ~1e-13 (float32 noise is ~1e-8).
    ours64 = _in_float64(LpipsDistance.from_weights(path, net, device="cpu", batch_size=3)).distance(a, b)
    for got, want in zip(ours64, expected64, strict=True):
        assert abs(got - want) <= 2 * _bound64(net, want), (ours64, expected64)

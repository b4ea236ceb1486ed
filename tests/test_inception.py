"""FID's Inception-v3 features: the plain-torch port against torch-fidelity 0.4.0's own code, plus loading checks.

The real weights are not available offline, so the network is random but fixed (seeded; see
random_inception_state), saved in torch-fidelity's key layout (fc included) and loaded by both sides from the same file.
"""

from __future__ import annotations

import importlib
import importlib.util
import itertools
import math
import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from bounds import EPS64, probable, worst_case
from llm_dit.errors import LlmDitError
from llm_dit.metrics.distribution import INCEPTION_WEIGHTS_FILE, check_inception_weights
from llm_dit.metrics.inception import (
    FEATURE_DIM,
    INPUT_SIZE,
    RESIZE_MODES,
    InceptionFeatures,
    build_network,
    resize_antialias,
    resize_tf1,
)
from metrics_helpers import textured_image as _image

pytestmark = pytest.mark.numerics  # float results within derived bounds: CI runs these again with 2 threads

SIZES = ((299, 299), (96, 72), (512, 384))  # (width, height): exactly the input size, upsampled, downsampled


# ------------------------------------------------------------------------------------------------ bounds


def _network_length() -> int:
    """Rounding budget of one feature through the network, in the sense of bounds.py (summed reduction lengths,
    counted over every layer call as bounds.count_reductions does: an over-count of the longest path, since the
    blocks concatenate their branches and one feature's error comes down one path).

    - each convolution: its fan-in, in_channels x kernel height x kernel width (94 of them, 94011 in all);
    - each batch norm in evaluation, (x - mean) / sqrt(var + eps) * weight + bias: 6 roundings (add, sqrt,
      divide, subtract, multiply, add); ReLU and max pools are exact;
    - the eight 3x3 average pools without padded zeros (Mixed_5b-d, Mixed_6b-e, Mixed_7b): 9 terms + 1 division;
    - the final average over the 8x8 grid: 64 terms + 1 division.
    """
    with torch.device("meta"):
        network = build_network()
    convs = sum(m.in_channels * math.prod(m.kernel_size) for m in network.modules() if isinstance(m, nn.Conv2d))
    norms = sum(1 for m in network.modules() if isinstance(m, nn.BatchNorm2d))
    return convs + 6 * norms + 8 * 10 + 65


NETWORK_LENGTH = _network_length()


def _preprocess_length(resize: str, width: int, height: int) -> int:
    """The same for the input: tf1 lerps twice (subtract, multiply, add each: 6); antialias sums at most
    2 ceil(in / 299) + 2 taps per axis, each weight evaluated and normalised (2 roundings); then x - 128 (1
    rounding; the division by 128 is exact). Not counted: the rounding of the sample positions and of the
    antialias weights' arguments, which grows with the coordinate. Every float32 comparison below runs the same
    float32 operations on the same positions on both sides (torch-fidelity's resize, or the same F.interpolate
    call), so they are no difference there; the float32-vs-float64 check uses 299x299 images only, where both
    resizes are exact."""
    if resize == "tf1":
        return 6 + 1
    taps = [2 * math.ceil(max(side / INPUT_SIZE, 1.0)) + 2 for side in (width, height)]
    return sum(k + 2 for k in taps) + 1


def _bound(reference: np.ndarray, image: Image.Image, resize: str, error: Callable[[int], float] = probable) -> float:
    """Bound on the 2-norm error of one image's float32 feature vector ``reference``: a relative error of
    probable(N) (bounds.probable, Higham & Mary's probabilistic bound with lambda = 6), N = the network's and the
    preprocessing's budgets above (~9.5e4: 1.1e-4 relative). ``error=lambda n: worst_case(n, EPS64)`` for a float64
    evaluation (~2e-11 relative)."""
    n = NETWORK_LENGTH + _preprocess_length(resize, *image.size)
    return error(n) * float(np.linalg.norm(reference))


def _bound64(reference: np.ndarray, image: Image.Image, resize: str) -> float:
    return _bound(reference, image, resize, error=lambda n: worst_case(n, EPS64))


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


# ------------------------------------------------------------------------------------------------ weights, images


def random_inception_state(seed: int) -> dict[str, torch.Tensor]:
    """A seeded network in torch-fidelity's layout, fc (1008 classes) included, so the full file loads there.

    Variance-preserving weights (kaiming for the ReLU convolutions) and batch norms near the identity (scale and
    running variance within 20% of 1, small shifts and running means), so activations keep about unit scale down
    the 94 layers and the 2048 features still depend on the image (by 4% to 33% of their norm between the test
    images, hundreds of times the bound below). Batch norms calibrated to their inputs' statistics were tried and
    rejected: normalising every channel by its own spread makes the random network ill-conditioned (it amplified
    relative input perturbations ~90x, and its float32 error vs float64 came within 4x of the bound), which a
    rounding bound that ignores conditioning, as bounds.probable does, should not be tested on.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = build_network()
        for module in network.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.uniform_(module.weight, 0.8, 1.2)
                nn.init.normal_(module.bias, std=0.1)
                nn.init.normal_(module.running_mean, std=0.1)
                nn.init.uniform_(module.running_var, 0.8, 1.2)
        state = network.state_dict()
        state["fc.weight"] = torch.randn(1008, FEATURE_DIM) / math.sqrt(FEATURE_DIM)
        state["fc.bias"] = torch.zeros(1008)
    return state


def _save(path: Path, state: Any, **kwargs: Any) -> Path:
    torch.save(state, path, **kwargs)
    return path


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return random_inception_state(0)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory, state: dict[str, torch.Tensor]) -> Path:
    return _save(tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE, state)


@pytest.fixture(scope="module")
def model(weights_file: Path) -> InceptionFeatures:
    return InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=4)


# ------------------------------------------------------------------------------------------------ reference


@pytest.fixture(scope="module")
def fidelity() -> Iterator[types.ModuleType]:
    """torch-fidelity's ``feature_extractor_inceptionv3`` module, imported without the package's ``__init__``
    (which imports torchvision, absent here: its wheel needs CUDA torch). A stand-in package module points at the
    real package's directory, so the submodule and what it imports (feature_extractor_base, helpers,
    interpolate_compat_tensorflow, ...) are torch-fidelity's own files; all of them are forgotten afterwards."""
    spec = importlib.util.find_spec("torch_fidelity")  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torch-fidelity is not installed (pip install --no-deps torch-fidelity==0.4.0)")
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in sys.modules if n == "torch_fidelity" or n.startswith("torch_fidelity.")]:
            mp.delitem(sys.modules, name)
        mp.setitem(sys.modules, "torch_fidelity", package)
        before = set(sys.modules)
        try:
            yield importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
        finally:
            for name in set(sys.modules) - before:
                if name.startswith("torch_fidelity."):
                    del sys.modules[name]
    assert not [n for n in sys.modules if n == "torch_fidelity" or n.startswith("torch_fidelity.")]
    assert "torchvision" not in sys.modules


def _reference(fidelity: types.ModuleType, path: Path) -> Any:
    """torch-fidelity's extractor as FID uses it (the "2048" features), loading the weights file itself."""
    return fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path)
    ).eval()


def _uint8(image: Image.Image) -> torch.Tensor:
    """torch-fidelity's input: uint8 ``[1, 3, H, W]``."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).unsqueeze(0)


def _reference_features(reference: Any, images: list[Image.Image]) -> np.ndarray:
    """One image per forward (torch-fidelity batches only equal sizes); float32 ``[n, 2048]``."""
    with torch.inference_mode():
        return np.concatenate([reference(_uint8(im))[0].numpy() for im in images])


def _reference_features64(reference: Any, images: list[Image.Image]) -> np.ndarray:
    """torch-fidelity's computation in float64 throughout. Its ``feature_extractor_internal_dtype="float64"`` is
    mapped to float32 (helpers.text_to_dtype), and its forward casts the features to float32 at the end, so the
    model is cast here and the float64 pool output is read by a hook on its AvgPool (only a flatten follows)."""
    reference = reference.double()
    reference.feature_extractor_internal_dtype = torch.float64
    pooled: list[torch.Tensor] = []
    handle = reference.AvgPool.register_forward_hook(lambda module, args, out: pooled.append(out.flatten(1)))
    try:
        with torch.inference_mode():
            for im in images:
                reference(_uint8(im))
    finally:
        handle.remove()
    assert all(p.dtype == torch.float64 for p in pooled)
    return torch.cat(pooled).numpy()


def _in_float64(model: InceptionFeatures) -> InceptionFeatures:
    """``model`` computing in float64 throughout, input included (white-box: it casts the port's float32 network and
    input; the computation is unchanged), so its formula can be compared with torch-fidelity's far below float32
    noise."""
    assert model._network is not None
    model._network = model._network.double()
    model._dtype = torch.float64
    return model


def test_matches_torch_fidelity_tf1(fidelity: types.ModuleType, weights_file: Path) -> None:
    images = [_image(1, *SIZES[0]), _image(2, *SIZES[1]), _image(3, *SIZES[2]), _image(4, *SIZES[0])]
    expected = _reference_features(_reference(fidelity, weights_file), images)
    # The production path: float32, all four sizes mixed in one call with one network batch (torch-fidelity: one
    # image per forward). Each row within both evaluations' rounding.
    ours = InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=4, resize="tf1").features(images)
    assert ours.shape == (4, FEATURE_DIM) and ours.dtype == np.float64
    bounds = [_bound(e, im, "tf1") for e, im in zip(expected, images, strict=True)]
    errors = [_distance(o, e) for o, e in zip(ours, expected, strict=True)]
    assert all(err <= 2 * b for err, b in zip(errors, bounds, strict=True)), (errors, bounds)
    # A non-trivial comparison: the features depend on the image far beyond that tolerance (different images,
    # different features by over 20x both bounds; 170x to 1300x here), so a wrong block, pool or resize would show.
    for i, j in itertools.combinations(range(4), 2):
        assert _distance(expected[i], expected[j]) > 20 * (bounds[i] + bounds[j]), (i, j)
    # The formula, in float64 on identical inputs: within the float64 bound (~1e-11 relative; float32 noise ~1e-7).
    expected64 = _reference_features64(_reference(fidelity, weights_file), images)
    ours64 = _in_float64(InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=4, resize="tf1"))
    got64 = ours64.features(images)
    for got, want, im in zip(got64, expected64, images, strict=True):
        assert _distance(got, want) <= 2 * _bound64(want, im, "tf1"), (_distance(got, want), _bound64(want, im, "tf1"))
    # And the float32 bound holds on this network: on the 299x299 images, where the resize is exact in both
    # precisions, the float32 features lie within one bound of the float64 ones (observed ~500x inside it).
    for k in (0, 3):
        assert _distance(ours[k], expected64[k]) <= _bound(expected64[k], images[k], "tf1"), k


def test_antialias_matches_torch_fidelity_network_with_torch_resize(
    fidelity: types.ModuleType, weights_file: Path
) -> None:
    # torch-fidelity's network, with its resize replaced by the antialiased F.interpolate call that torchmetrics
    # makes with antialias=True (the forward calls the module-level name): the reference for the default mode.
    calls: list[tuple[int, ...]] = []

    def antialias(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners, antialias=True)

    images = [_image(5, *SIZES[2]), _image(6, *SIZES[1])]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fidelity, "interpolate_bilinear_2d_like_tensorflow1x", antialias)
        expected = _reference_features(_reference(fidelity, weights_file), images)
    assert calls == [(1, 3, 384, 512), (1, 3, 72, 96)]  # torch-fidelity's forward resized through the stand-in
    ours = InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=2).features(images)
    for got, want, im in zip(ours, expected, images, strict=True):
        assert _distance(got, want) <= 2 * _bound(want, im, "antialias"), (_distance(got, want), im.size)


def test_resize_modes_differ_when_downsampling_and_agree_at_299(weights_file: Path, model: InceptionFeatures) -> None:
    large, exact = _image(7, 512, 512), _image(8, 299, 299)
    tf1 = InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=4, resize="tf1")
    assert model.resize == "antialias"  # the default
    ours_tf1, ours_aa = tf1.features([large, exact]), model.features([large, exact])
    # 512 -> 299: tf1 samples points (aliasing), antialias averages; different exact values, since the difference
    # is over twice both evaluations' bounds.
    bounds = _bound(ours_tf1[0], large, "tf1") + _bound(ours_aa[0], large, "antialias")
    assert _distance(ours_tf1[0], ours_aa[0]) > 2 * bounds
    # 299 -> 299: both resizes are the identity, bit for bit (tf1 samples at i * 1.0 with weight 0 on the
    # neighbour; antialias has one tap of weight 1), so the rest is literally the same computation.
    x = _uint8(exact).float()
    assert torch.equal(resize_tf1(x, (299, 299)), x) and torch.equal(resize_antialias(x, (299, 299)), x)
    assert np.array_equal(ours_tf1[1], ours_aa[1])


# ------------------------------------------------------------------------------------------------ values


def test_batch_size_does_not_change_values_and_order_is_kept(weights_file: Path, model: InceptionFeatures) -> None:
    images = [_image(20, 64, 48), _image(21, 299, 299), _image(22, 64, 48), _image(23, 120, 90), _image(24)]
    one = InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=1).features(images)
    three = InceptionFeatures.from_weights(weights_file, device="cpu", batch_size=3).features(images)
    bounds = [_bound(row, im, "antialias") for row, im in zip(one, images, strict=True)]
    # Other batch shapes: each row within both evaluations' rounding...
    assert all(_distance(a, b) <= 2 * e for a, b, e in zip(three, one, bounds, strict=True))
    # ...and the rows lie further apart than that, so a reordering would show.
    assert min(_distance(one[i], one[j]) for i, j in itertools.combinations(range(5), 2)) > 4 * max(bounds)
    empty = model.features([])
    assert empty.shape == (0, FEATURE_DIM) and empty.dtype == np.float64


def test_weights_are_used(tmp_path: Path, model: InceptionFeatures) -> None:
    other = InceptionFeatures.from_weights(_save(tmp_path / "b.pth", random_inception_state(1)), device="cpu")
    images = [_image(30), _image(31, 299, 299)]
    for mine, theirs, im in zip(model.features(images), other.features(images), images, strict=True):
        assert _distance(mine, theirs) > _bound(mine, im, "antialias") + _bound(theirs, im, "antialias")


def test_arrays_paths_and_pil_images_give_the_same_features(tmp_path: Path, model: InceptionFeatures) -> None:
    image = _image(32)
    image.save(tmp_path / "a.png")
    # One image per call: the same pixels in the same batch shape, literally the same computation (bit-equal).
    inputs = [image, np.asarray(image), np.asarray(image.convert("RGBA")), tmp_path / "a.png", str(tmp_path / "a.png")]
    rows = [model.features([x]) for x in inputs]
    assert all(np.array_equal(r, rows[0]) for r in rows)
    # A batch as one uint8 array [n, H, W, 3] is a sequence of images too.
    assert np.array_equal(model.features(np.stack([np.asarray(image)] * 2)), np.concatenate([rows[0]] * 2))
    for single in (image, np.asarray(image), tmp_path / "a.png"):
        with pytest.raises(LlmDitError, match=r"takes a sequence of images, got one image; pass \[image\]"):
            model.features(single)  # type: ignore[arg-type]
    with pytest.raises(LlmDitError, match="expected an 8-bit RGB array"):
        model.features([np.zeros((8, 8, 3), dtype=np.float32)])


def test_files_without_fc_or_num_batches_tracked_load(
    tmp_path: Path, state: dict[str, torch.Tensor], model: InceptionFeatures
) -> None:
    # fc is ignored, num_batches_tracked may be absent (files saved before torch 0.4.1 lack it); a legacy
    # (pre-1.6 pickle) file is read whole rather than memory-mapped. The same tensors: the same features, bit-equal.
    stripped = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith(".num_batches_tracked")}
    path = _save(tmp_path / "stripped.pth", stripped, _use_new_zipfile_serialization=False)
    images = [_image(33)]
    assert np.array_equal(InceptionFeatures.from_weights(path, device="cpu").features(images), model.features(images))


# ------------------------------------------------------------------------------------------------ errors

FIX = r"set inception_weights in \[default\.metrics\] \(or \[PROFILE\.metrics\]\) to torch-fidelity's " + (
    INCEPTION_WEIGHTS_FILE.replace(".", r"\.")
)


def _refused(path: Path, pattern: str, **kwargs: Any) -> None:
    with pytest.raises(LlmDitError, match=pattern) as info:
        InceptionFeatures.from_weights(path, device="cpu", **kwargs)
    assert "\n" not in str(info.value), str(info.value)


def test_missing_wrong_and_unexpected_keys(tmp_path: Path, state: dict[str, torch.Tensor]) -> None:
    missing = {k: v for k, v in state.items() if k != "Mixed_6c.branch7x7_2.conv.weight"}
    _refused(_save(tmp_path / "m.pth", missing), rf"has no tensor Mixed_6c\.branch7x7_2\.conv\.weight; {FIX}$")
    wrong = state | {"Mixed_7c.branch_pool.bn.running_var": torch.ones(191)}
    _refused(
        _save(tmp_path / "w.pth", wrong),
        rf"Mixed_7c\.branch_pool\.bn\.running_var in .*w\.pth has shape \(191,\) "
        rf"but the network needs \(192,\); {FIX}$",
    )
    # torchvision's Inception3 shares these names but adds the auxiliary classifier: another network, refused.
    aux = {"AuxLogits.conv0.conv.weight": torch.zeros(128, 768, 1, 1), "AuxLogits.fc.weight": torch.zeros(1000, 768)}
    _refused(
        _save(tmp_path / "u.pth", state | aux), rf"has unexpected AuxLogits\.conv0\.conv\.weight \(and 1 more\); {FIX}$"
    )


def test_unreadable_and_missing_files(tmp_path: Path, weights_file: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    _refused(garbage, rf"cannot read weights file .*garbage\.pth \(.+\); {FIX}$")
    _refused(_save(tmp_path / "list.pth", [torch.zeros(1)]), rf"list\.pth holds no state dict; {FIX}$")
    _refused(tmp_path / "nope.pth", rf"weights file .*nope\.pth not found; {FIX}$")
    _refused(tmp_path, rf"weights file {re.escape(str(tmp_path))} is not a file; {FIX}$")
    # check_inception_weights (the set-level pass's check before anything loads): the same checks, loading nothing.
    assert check_inception_weights(weights_file) == weights_file
    for path, problem in ((tmp_path / "nope.pth", "not found"), (tmp_path, "is not a file")):
        with pytest.raises(LlmDitError, match=rf"{problem}; {FIX}$"):
            check_inception_weights(path)


def test_bad_resize_or_batch_size(weights_file: Path) -> None:
    assert RESIZE_MODES == ("antialias", "tf1")
    _refused(weights_file, r"unknown resize mode 'tf2' \(did you mean 'tf1'\?\); use antialias or tf1$", resize="tf2")
    for bad in (0, -1, 2.5, True):
        _refused(weights_file, rf"batch_size must be an integer of at least 1, got {bad!r}$", batch_size=bad)


def test_unload(weights_file: Path) -> None:
    model = InceptionFeatures.from_weights(weights_file, device="cpu")
    model.unload()
    with pytest.raises(LlmDitError, match="unloaded; create a new InceptionFeatures with from_weights"):
        model.features([_image(1)])

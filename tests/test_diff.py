"""``llm_dit.analysis.diff`` against pixels computed by hand: luma, the red highlight and its threshold boundary,
absolute differences with gain and clipping, the heatmap's index into its colour table, statistics, and errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from llm_dit.analysis.diff import (
    DEFAULT_THRESHOLD,
    HIGHLIGHT_RGB,
    abs_diff,
    changed_mask,
    check_mode,
    diff_image,
    diff_stats,
    heatmap_lut,
    luma,
)
from llm_dit.errors import LlmDitError


def rgb(*pixels: tuple[int, int, int], width: int | None = None) -> np.ndarray:
    """An HxWx3 uint8 image from pixels in row-major order (one row unless ``width`` says otherwise)."""
    array = np.array(pixels, dtype=np.uint8)
    width = width or len(pixels)
    return array.reshape(len(pixels) // width, width, 3)


def test_luma_matches_hand_computed_itu601_values_and_pil() -> None:
    # (R*19595 + G*38470 + B*7471 + 32768) >> 16, by hand:
    # red 255*19595 = 4996725 -> (4996725 + 32768) / 65536 = 76.7 -> 76; green -> 150.2 -> 150;
    # blue -> 29.6 -> 29; white -> 255.5 -> 255; (10, 20, 30): 195950 + 769400 + 224130 + 32768 = 1222248 -> 18.6 -> 18
    image = rgb((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0), (10, 20, 30))
    assert luma(image).tolist() == [[76, 150, 29, 255, 0, 18]]
    assert luma(image).dtype == np.uint8
    # The docstring's promise: exactly PIL's "L" conversion.
    assert np.array_equal(luma(image), np.asarray(Image.fromarray(image).convert("L")))


def test_abs_diff_has_no_uint8_wraparound() -> None:
    a = rgb((3, 250, 0))
    b = rgb((12, 5, 0))
    assert abs_diff(a, b).tolist() == [[[9, 245, 0]]]  # uint8 subtraction would give 247 and 245
    assert abs_diff(b, a).tolist() == [[[9, 245, 0]]]


def test_highlight_paints_pixels_above_threshold_red_and_keeps_the_rest_grey() -> None:
    a = rgb((100, 100, 100), (100, 100, 100), (12, 40, 200), (50, 60, 70), width=2)
    b = rgb(
        (108, 100, 100),  # differs by exactly the threshold (8): unchanged
        (100, 91, 100),  # by 9 in green: changed
        (12, 40, 191),  # by 9 in blue, B below A: changed
        (50, 60, 70),  # equal
        width=2,
    )
    out = diff_image(a, b, "highlight", threshold=8)
    # grey of (100, 100, 100) is 100; of (50, 60, 70): 979750 + 2308200 + 522970 + 32768 = 3843688 -> 58.65 -> 58
    assert out.tolist() == [
        [[100, 100, 100], list(HIGHLIGHT_RGB)],
        [list(HIGHLIGHT_RGB), [58, 58, 58]],
    ]
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    # One level lower, the boundary pixel counts as changed.
    assert diff_image(a, b, "highlight", threshold=7)[0, 0].tolist() == list(HIGHLIGHT_RGB)


def test_highlight_uses_the_grey_of_a_not_b() -> None:
    a = rgb((255, 0, 0))
    b = rgb((255, 0, 4))  # below the threshold: unchanged, drawn as A's grey (76), not B's
    assert diff_image(a, b, "highlight").tolist() == [[[76, 76, 76]]]


def test_threshold_extremes() -> None:
    a = rgb((0, 0, 0), (0, 0, 0))
    b = rgb((1, 0, 0), (255, 255, 255))
    # 0: any difference is a change; 255: nothing can exceed it.
    assert changed_mask(a, b, 0).tolist() == [[True, True]]
    assert changed_mask(a, b, 255).tolist() == [[False, False]]
    assert diff_image(a, b, "highlight", threshold=255).tolist() == [[[0, 0, 0], [0, 0, 0]]]


def test_absolute_multiplies_by_gain_and_clips_at_255() -> None:
    a = rgb((10, 200, 0), (7, 7, 7))
    b = rgb((30, 100, 255), (7, 7, 7))
    # |A-B| = (20, 100, 255) and (0, 0, 0)
    assert diff_image(a, b, "absolute").tolist() == [[[20, 100, 255], [0, 0, 0]]]
    # x2 = (40, 200, 510 -> 255)
    assert diff_image(a, b, "absolute", gain=2).tolist() == [[[40, 200, 255], [0, 0, 0]]]
    # x0.3 = (6, 30, 76.5 -> 76: numpy rounds halves to even)
    assert diff_image(a, b, "absolute", gain=0.3).tolist() == [[[6, 30, 76], [0, 0, 0]]]


def test_heatmap_indexes_the_colour_table_by_mean_over_max() -> None:
    a = rgb((0, 0, 0), (0, 0, 0), (0, 0, 0), (9, 9, 9))
    b = rgb((3, 0, 0), (90, 90, 90), (60, 0, 0), (9, 9, 9))
    # per-pixel means 1, 90, 20, 0; top 90 -> indices round(1/90*255) = round(2.83) = 3, 255,
    # round(20/90*255) = round(56.67) = 57, 0
    lut = heatmap_lut()
    assert diff_image(a, b, "heatmap").tolist() == [
        [lut[3].tolist(), lut[255].tolist(), lut[57].tolist(), lut[0].tolist()]
    ]


def test_heatmap_colour_table_is_inferno() -> None:
    lut = heatmap_lut()
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    # inferno's ends: #000004 (black) and #fcffa4 (pale yellow), within matplotlib's rounding
    assert np.abs(lut[0].astype(int) - [0, 0, 4]).max() <= 1
    assert np.abs(lut[255].astype(int) - [252, 255, 164]).max() <= 1
    # brightness rises from one end to the other
    assert luma(lut[None, :, :])[0, 0] < luma(lut[None, :, :])[0, 128] < luma(lut[None, :, :])[0, 255]


def test_equal_images() -> None:
    a = rgb((10, 20, 30), (200, 100, 0))
    # greys: (10, 20, 30) -> 18 (see above); (200, 100, 0): 3919000 + 3847000 + 32768 = 7798768 -> 118.99 -> 118
    assert diff_image(a, a.copy(), "highlight").tolist() == [[[18] * 3, [118] * 3]]
    assert diff_image(a, a.copy(), "absolute", gain=5).tolist() == [[[0, 0, 0], [0, 0, 0]]]
    # no difference anywhere: every pixel is the table's first colour (no division by a zero maximum)
    assert diff_image(a, a.copy(), "heatmap").tolist() == [[heatmap_lut()[0].tolist()] * 2]
    stats = diff_stats(a, a.copy())
    assert (stats.max_abs_diff, stats.mean_abs_diff, stats.max_mean_diff, stats.changed_fraction) == (0, 0.0, 0.0, 0.0)


def test_stats_by_hand() -> None:
    a = rgb((0, 0, 0), (0, 0, 0), (0, 0, 0), (0, 0, 0))
    b = rgb((8, 0, 0), (9, 0, 0), (30, 30, 0), (0, 0, 0))
    stats = diff_stats(a, b, threshold=8)
    assert stats.max_abs_diff == 30
    assert stats.mean_abs_diff == pytest.approx((8 + 9 + 30 + 30) / 12)
    assert stats.max_mean_diff == pytest.approx(20.0)
    assert stats.changed_fraction == pytest.approx(2 / 4)  # 9 and 30 exceed 8; 8 does not
    assert stats.threshold == 8
    assert diff_stats(a, b).threshold == DEFAULT_THRESHOLD


def test_inputs_are_not_modified() -> None:
    a = rgb((1, 2, 3), (200, 200, 200))
    b = rgb((100, 2, 3), (0, 0, 0))
    before = (a.copy(), b.copy())
    for mode in ("highlight", "absolute", "heatmap"):
        diff_image(a, b, mode)
    assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])


def test_size_mismatch_is_a_user_error() -> None:
    a = np.zeros((1, 2, 3), np.uint8)
    b = np.zeros((2, 1, 3), np.uint8)
    with pytest.raises(LlmDitError, match=r"differ in size \(2x1 vs 1x2\)"):
        diff_image(a, b)
    with pytest.raises(LlmDitError, match="differ in size"):
        diff_stats(a, b)


@pytest.mark.parametrize(
    ("a", "match"),
    [
        (np.zeros((2, 2, 3), np.float32), "uint8"),
        (np.zeros((2, 2), np.uint8), "HxWx3"),
        (np.zeros((2, 2, 4), np.uint8), "HxWx3"),
    ],
)
def test_non_rgb_uint8_input_is_a_user_error(a: np.ndarray, match: str) -> None:
    with pytest.raises(LlmDitError, match=match):
        diff_image(a, np.zeros((2, 2, 3), np.uint8))


def test_bad_mode_threshold_and_gain() -> None:
    a = np.zeros((1, 1, 3), np.uint8)
    with pytest.raises(LlmDitError, match="highlight, absolute, heatmap"):
        check_mode("red")
    with pytest.raises(LlmDitError, match="diff mode 'red'"):
        diff_image(a, a, "red")
    with pytest.raises(LlmDitError, match=r"0\.\.255"):
        diff_image(a, a, threshold=256)
    with pytest.raises(LlmDitError, match=r"0\.\.255"):
        diff_image(a, a, threshold=-1)
    with pytest.raises(LlmDitError, match="gain"):
        diff_image(a, a, "absolute", gain=0)

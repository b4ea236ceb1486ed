"""Draw the reference images the built-in VL experiments ship with (``src/llm_dit/data/inputs/``).

- ``test_scene.png``: the seed project's "test_scene", a simple cartoon house with a red roof under a blue sky, on
  green grass, with a yellow sun (256x256): a clear subject, layout and palette for a VL pass to carry.
- ``style_reference.png``: a strongly stylised image, bold brush-like wavy stripes in a sunset palette (256x256), for
  the style experiments (style delta, AdaIN, style transfer) and as the second multi-reference image.

Deterministic: PIL drawing only, the stripes' wobble from ``random.Random(SEED)``; the same PIL writes the same bytes
(the run ids of the built-ins hash these bytes, so regenerate them only on purpose). Run from the repository root:
``python scripts/make_inputs.py`` (``--check`` exits 1 if the committed files differ from what it draws).
"""

from __future__ import annotations

import argparse
import io
import math
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 256
SEED = 4  # seed 004, the Qwen3-VL studies
FOLDER = Path(__file__).resolve().parents[1] / "src" / "llm_dit" / "data" / "inputs"

SKY = (110, 180, 235)
GRASS = (80, 170, 70)
SUN = (255, 215, 40)
WALL = (240, 225, 180)
ROOF = (200, 40, 35)
DOOR = (120, 70, 40)
WINDOW = (150, 210, 245)
OUTLINE = (40, 30, 25)
SUNSET = [(60, 20, 90), (130, 30, 110), (200, 50, 90), (240, 100, 60), (250, 160, 50), (255, 215, 90)]


def test_scene() -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), SKY)
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 176, SIZE, SIZE), fill=GRASS)
    draw.ellipse((190, 20, 236, 66), fill=SUN)
    for k in range(8):  # the sun's rays
        angle = k * math.pi / 4
        inner, outer = 30, 42
        cx, cy = 213, 43
        start = (cx + inner * math.cos(angle), cy + inner * math.sin(angle))
        end = (cx + outer * math.cos(angle), cy + outer * math.sin(angle))
        draw.line((start, end), fill=SUN, width=4)
    draw.rectangle((64, 120, 176, 196), fill=WALL, outline=OUTLINE, width=3)  # the house
    draw.polygon([(52, 122), (120, 62), (188, 122)], fill=ROOF, outline=OUTLINE)
    draw.rectangle((106, 150, 134, 196), fill=DOOR, outline=OUTLINE, width=2)
    for x in (76, 148):
        draw.rectangle((x, 134, x + 20, 154), fill=WINDOW, outline=OUTLINE, width=2)
    draw.rectangle((148, 74, 162, 100), fill=ROOF, outline=OUTLINE, width=2)  # chimney
    return image


def style_reference() -> Image.Image:
    rng = random.Random(SEED)
    image = Image.new("RGB", (SIZE, SIZE), SUNSET[0])
    draw = ImageDraw.Draw(image)
    bands = 11
    height = SIZE / bands
    for band in range(bands):
        colour = SUNSET[min(band * len(SUNSET) // bands, len(SUNSET) - 1)]  # dusk at the top, gold below
        top = band * height - 6
        phase, amplitude = rng.uniform(0, 2 * math.pi), rng.uniform(4, 10)
        upper = [(x, top + amplitude * math.sin(x / 23 + phase) + rng.uniform(-2, 2)) for x in range(-8, SIZE + 9, 8)]
        lower = [(x, y + height + 8 + rng.uniform(-3, 3)) for x, y in reversed(upper)]
        draw.polygon(upper + lower, fill=colour)
    for _ in range(9):  # a few dark diagonal strokes across the bands
        x = rng.uniform(0, SIZE)
        draw.line((x, -10, x + rng.uniform(-60, 60), SIZE + 10), fill=SUNSET[0], width=rng.randint(3, 7))
    return image


def png_bytes(image: Image.Image) -> bytes:
    # A 64-colour palette keeps the flat drawings a few KB, losslessly for these few colours.
    buffer = io.BytesIO()
    image.quantize(colors=64, dither=Image.Dither.NONE).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


IMAGES = {"test_scene.png": test_scene, "style_reference.png": style_reference}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="Exit 1 if a committed image differs; write nothing.")
    args = parser.parse_args(argv)
    differ = []
    for name, draw in IMAGES.items():
        data = png_bytes(draw())
        path = FOLDER / name
        if args.check:
            if not path.is_file() or path.read_bytes() != data:
                differ.append(name)
            continue
        FOLDER.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path} ({len(data)} bytes)")
    if differ:
        print(f"differ from what this script draws: {', '.join(differ)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

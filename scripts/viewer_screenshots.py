"""Regenerate the screenshots of docs/viewer.md: one per view of ``llm-dit view``.

    python scripts/viewer_screenshots.py                  # tiny model at 128x128 into a temp dir, then screenshots
    python scripts/viewer_screenshots.py --results DIR    # reuse results this script generated earlier

Needs Debian's chromium (``make browser``) and playwright. Without --results it runs two built-in experiments on
the built-in tiny random model (its images are noise: the screenshots show the viewer, not image quality):
shift_steps_grid (2 prompts, seed 42) and think_block (2 prompts, seed 42), with the weight-free metrics.
Screenshots are written as palette PNGs to stay small (< 300 KB each).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from llm_dit.viewer.server import running

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
MAX_BYTES = 300_000


RESULTS_HELP = (
    "a results directory this script generated before (it needs think_block and shift_steps_grid from the tiny "
    "model, prompts simple_001/animal_001, seed 42); default: generate one"
)


def generate(root: Path) -> None:
    """The two experiments the screenshots show, on the tiny model at 128x128."""
    from llm_dit.cli import main

    for experiment in ("shift_steps_grid", "think_block"):
        argv = ["ablate", "--model", "tiny", "--experiment", experiment, "--max-prompts", "2", "--seeds", "42",
                "--set", "width=128", "--set", "height=128", "--output-dir", str(root),
                "--compute-metrics"]  # fmt: skip
        if main(argv) != 0:
            sys.exit(f"generating {experiment} failed")


def save_small(png: bytes, path: Path) -> int:
    """The screenshot as a 256-colour PNG (noise images do not compress otherwise); returns its size."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", optimize=True)
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def shoot(base: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with urllib.request.urlopen(base + "api/experiments/think_block") as response:
        think = json.load(response)
    mood = next(r for r in think["runs"] if r["variables"]["think"] == "mood" and r["status"] == "done")
    grid_prompt = "simple_001"
    views = {
        "viewer_grid": [("exp", "shift_steps_grid"), ("view", "grid"), ("rows", "steps"), ("cols", "shift"),
                        ("thumb", 112), ("fix.prompt", grid_prompt), ("fix.seed", "42"), ("hide.steps", "12"),
                        ("hide.steps", "15")],
        "viewer_slider": {"exp": "shift_steps_grid", "view": "slider", "dim": "shift", "a": "2.0", "b": "4.0",
                          "size": 512, "split": 42, "fix.prompt": grid_prompt, "fix.steps": "8", "fix.seed": "42"},
        "viewer_ab": {"exp": "think_block", "view": "ab", "dim": "think", "a": "none", "b": "empty", "size": 512,
                      "shown": "B", "fix.prompt": mood["prompt_id"], "fix.seed": "42"},
        "viewer_diff": {"exp": "shift_steps_grid", "view": "diff", "dim": "steps", "a": "8", "b": "9", "size": 512,
                        "mode": "highlight", "threshold": 16, "opacity": 100, "fix.prompt": grid_prompt,
                        "fix.shift": "3.0", "fix.seed": "42"},
        "viewer_record": {"exp": "think_block", "view": "grid", "rows": "prompt", "cols": "think", "thumb": 112,
                          "fix.seed": "42", "record": mood["run_id"]},
    }  # fmt: skip
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 760})
        for name, params in views.items():
            page.goto(f"{base}#{urlencode(params)}")
            page.wait_for_selector("body[data-ready=true]")
            if name == "viewer_record":
                page.wait_for_selector('[data-testid="record"]:not([hidden])')
            page.wait_for_function("() => [...document.images].every(i => !i.src || (i.complete && i.naturalWidth))")
            time.sleep(0.3)
            size = save_small(page.screenshot(), out / f"{name}.png")
            print(f"{out / name}.png: {size // 1024} KB")
            if size > MAX_BYTES:
                sys.exit(f"{name}.png is {size} bytes, over {MAX_BYTES}: make the view smaller")
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, help=RESULTS_HELP)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.results is not None:
        with running(args.results) as base:
            shoot(base, args.out)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "results"
        generate(root)
        with running(root) as base:
            shoot(base, args.out)


if __name__ == "__main__":
    main()

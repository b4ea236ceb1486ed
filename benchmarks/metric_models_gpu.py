"""Metric models on a GPU: SigLIP2 (fixed and NaFlex) and CLIP scores on CUDA in float32 and bfloat16 against CPU
float32, on the tiny test models (tests/tiny_scorers.py) with 1024x1024 inputs. Prints the largest difference and
the time to score the 8 images (batches of 4, no warm-up: indicative only). Run from the repository root on a
machine with CUDA (see docs/metrics.md)."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from llm_dit.metrics.scorers import ClipScorer, SiglipScorer
from tiny_scorers import build_tiny_clip, build_tiny_siglip


def main() -> None:
    root = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (1024, 1024, 3), dtype=np.uint8)) for _ in range(8)]
    texts = [f"a photo of a cat number {i}" for i in range(8)]
    models = (
        ("siglip", SiglipScorer, build_tiny_siglip(root / "siglip")),
        ("siglip2-naflex", SiglipScorer, build_tiny_siglip(root / "naflex", naflex=True)),
        ("clip", ClipScorer, build_tiny_clip(root / "clip")),
    )
    for name, cls, path in models:
        cpu = np.array(cls.from_pretrained(path, device="cpu", dtype="float32").score(images, texts))
        for dtype in ("float32", "bfloat16"):
            scorer = cls.from_pretrained(path, device="cuda", dtype=dtype, batch_size=4)
            start = time.perf_counter()
            got = np.array(scorer.score(images, texts))
            seconds = time.perf_counter() - start
            print(f"{name} cuda {dtype}: max |cuda - cpu| = {np.abs(got - cpu).max():.2e} ({seconds:.3f} s for 8)")


if __name__ == "__main__":
    main()

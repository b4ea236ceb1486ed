"""Shared fixtures: one tiny Z-Image checkpoint per test session; the pinned test environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

# The environment of the test process and of every child process it starts (children copy os.environ, see
# cli_helpers.subprocess_env), whatever the caller's terminal and locale:
# - COLUMNS/LINES: rich lays tables out to COLUMNS (a 40-column terminal shortens run ids to "4f3a…"), and
#   llm_dit.cli.terminal creates its Console when llm_dit.cli is imported, so this runs before anything here
#   imports llm_dit. 80x25 is what rich uses without a terminal (pytest captures output): the width the CLI
#   tests were written against. A test needing another width for a stdout table sets COLUMNS with
#   monkeypatch (each table gets a fresh Console); the stderr console keeps the width it was built with.
# - LC_ALL/LANG: children decode arguments and encode their output (and open text files) in the locale's
#   encoding: C.UTF-8 everywhere. (This process's own locale was fixed at its start: `make test` sets both.)
# Threads: one intra-op thread unless OMP_NUM_THREADS is set (below); make test runs the numerics tests again
# with OMP_NUM_THREADS=2.
# LLM_DIT_TEST_COLUMNS overrides the width: make test's second pass sets it to 40, so a test whose result depends
# on the width fails there.
PINNED_ENV = {
    "COLUMNS": os.environ.get("LLM_DIT_TEST_COLUMNS", "80"),
    "LINES": "25",
    "LC_ALL": "C.UTF-8",
    "LANG": "C.UTF-8",
}
os.environ.update(PINNED_ENV)

from cli_helpers import forbid_model_loading  # noqa: E402  (after the pins: importing llm_dit.cli reads COLUMNS)
from llm_dit.models import checkpoint  # noqa: E402
from llm_dit.models.tiny import build_tiny_checkpoint  # noqa: E402

# The tiny models gain nothing from intra-op threads, and on a small shared machine torch's OpenMP threads
# spin against other processes: a 2-step 64x64 generation measured 6 s with 2 threads under load versus
# 0.08 s with 1. An explicit OMP_NUM_THREADS still wins.
if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def tokenizer_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An empty tokenizer cache per session (LLM_DIT_TOKENIZER_CACHE, which child processes inherit): tests never
    read or write the user's ~/.cache/llm-dit/tokenizers, and the first light tokenization builds for real."""
    path = tmp_path_factory.mktemp("tokenizer-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLM_DIT_TOKENIZER_CACHE", str(path))
        yield path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tokenizer_cache: Path) -> Path:
    """A complete tiny checkpoint (seed 0, diffusers layout), built once per session in a temp dir.

    Treat it as read-only: tests that need to damage a checkpoint work on a copy. Its tokenizer is in the session's
    tokenizer cache, as on a machine after its first run (keyed by content: copies of it find it too), so the light
    paths (dry runs, rejections) import no model library in tests either.
    """
    from llm_dit.models.tokenizer import checkpoint_tokenizer

    path = build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny-checkpoint", seed=0)
    checkpoint_tokenizer(path)
    return path


@pytest.fixture(scope="session")
def tiny_cached() -> Path:
    """The cached built-in tiny model (``--model tiny``) and its Qwen3-VL twin built, with the tokenizer in the
    session's cache: what a machine has after its first run (a fresh one builds them on first use, importing torch).
    Returns the tiny checkpoint's folder."""
    from llm_dit.models.tiny import tiny_checkpoint_path
    from llm_dit.models.tokenizer import checkpoint_tokenizer
    from llm_dit.models.vl import tiny_vl_path

    tiny_vl_path()
    path = tiny_checkpoint_path()
    checkpoint_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def cached_tokenizer() -> Iterator[None]:
    """Load each checkpoint's tokenizer once per module (~2 s each otherwise); everything else loads for real.

    For CLI-level tests that start many commands in one process: use with
    ``pytestmark = pytest.mark.usefixtures("cached_tokenizer")``.
    """
    real = checkpoint.load_tokenizer
    cache: dict[str, Any] = {}

    def load(path: str | Path) -> Any:
        key = str(Path(path).resolve())
        if key not in cache:
            cache[key] = real(path)
        return cache[key]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpoint, "load_tokenizer", load)
        yield


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to load a model's weights fails the test."""
    forbid_model_loading(monkeypatch)


# A small two-axis experiment for the comparison tools: prompts of two library categories plus a custom one,
# two seeds, labels with a comma (a blend) and a space, and a third axis-free dimension (seed) to filter on.
RESULTS_EXPERIMENT = """
name = "look"
description = "shift x layer on the tiny model, for the comparison tools' tests"
seeds = [1, 2]

[prompts]
ids = ["animal_001", "animal_002", "simple_001"]

[[axes]]
name = "shift"
values = [2.0, 3.0, 6.0]

[[axes]]
name = "layer"
values = [
  { label = "-2", hidden_layer = -2 },
  { label = "-2:0.5,-5:0.5", layer_weights = { "-2" = 0.5, "-5" = 0.5 } },
]
"""


@pytest.fixture(scope="session")
def tiny_results(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results directory made by the tiny model (64x64, 4 steps): experiment 'look' (3 prompts x shift 2.0,
    3.0, 6.0 x layer '-2' | '-2:0.5,-5:0.5' x seeds 1, 2 = 36 runs, with weight-free metrics) and 'look_custom'
    (one custom prompt, the same axes, seed 1). Session-scoped: treat it as read-only."""
    from llm_dit.cli import main

    root = tmp_path_factory.mktemp("results")
    toml = root.parent / "look.toml"
    toml.write_text(RESULTS_EXPERIMENT, encoding="utf-8")
    common = ["--model-path", str(tiny_checkpoint), "--output-dir", str(root), "--experiment-file", str(toml)]
    common += ["--set", "width=64", "--set", "height=64", "--set", "steps=4"]
    assert main(["ablate", *common, "--compute-metrics", "--metric", "ssim,psnr,mad,diversity_mad"]) == 0
    custom = RESULTS_EXPERIMENT.replace('name = "look"', 'name = "look_custom"')
    custom = custom.replace("seeds = [1, 2]", "seeds = [1]")
    toml.write_text(custom, encoding="utf-8")
    assert main(["ablate", *common, "--prompt", "A red cube on a blue table"]) == 0
    return root


# Debian's chromium, driven by Playwright (no browser download: there is no internet for it; 'make browser').
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]  # fmt: skip


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium per test module. Fails, never skips: a page is only tested if a browser runs it.
    Module scope, not session: Playwright's sync API keeps an event loop running while it is open, which breaks
    later tests that call asyncio.run."""
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: install Debian's chromium package ('make browser')"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()

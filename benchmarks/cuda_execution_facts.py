"""The CUDA branches of the runner's execution facts, checked on a GPU: peak memory, synchronised timing, device.

CI has no GPU, so these lines only run here. On the tiny model (every component on ``cuda``) it runs
``ablate`` twice through the CLI, as a user would:

1. batched (``--batch-size 4``): each run must store its batch size, position and seconds, a peak memory that is
   a real CUDA reading (>= the DiT's weight bytes, <= the card's memory) and a device naming the GPU;
2. ``--timing --timing-repeats 3``: batch 1, warmed up, synchronised; each run stores min <= median <= max and
   3 repeats.

Prints one line per run and exits 1 on the first broken expectation. ``--device cpu`` runs the same flow on the
CPU, where the expectations are the CPU's: no peak memory (NULL, never a fake 0) and no GPU named.

Run on the GPU machine:  python benchmarks/cuda_execution_facts.py      (here: --device cpu)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

EXPERIMENT = """name = "cuda_facts"
description = "two shifts x two seeds on the tiny model, on the GPU"
seeds = [1, 2]

[prompts]
ids = ["animal_001", "animal_002"]

[[axes]]
name = "shift"
values = [2.0, 4.0]
"""
CONFIG = """[default.encoder]
device = "{device}"

[default.pipeline]
device = "{device}"
"""
SMALL = ["--set", "width=64", "--set", "height=64", "--set", "steps=3"]


def run_cli(*argv: str) -> None:
    from llm_dit.cli import app

    try:
        app([*argv], standalone_mode=False)
    except SystemExit as exc:
        if exc.code:
            raise SystemExit(f"llm-dit {' '.join(argv)} exited {exc.code}") from None


def expect(ok: bool, what: str) -> None:
    if not ok:
        print(f"FAILED: {what}")
        sys.exit(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    device = parser.parse_args().device
    on_gpu = device == "cuda"
    if on_gpu:
        expect(torch.cuda.is_available(), "a CUDA device (run this on the GPU machine, or pass --device cpu)")
        card = torch.cuda.get_device_properties(0)
        print(f"device: {card.name}, {card.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")
    from llm_dit.experiments.store import ResultsStore
    from llm_dit.models import checkpoint

    tiny = checkpoint.resolve_model_path(None)
    dit = checkpoint.load_transformer(tiny, "cpu", torch.float32)
    dit_bytes = sum(p.numel() * p.element_size() for p in dit.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "exp.toml").write_text(EXPERIMENT)
        (root / "config.toml").write_text(CONFIG.format(device=device))
        common = ["--experiment-file", str(root / "exp.toml"), "--config", str(root / "config.toml"), *SMALL]
        common += ["--output-dir", str(root / "results")]
        for label, extra in (("batched", ["--batch-size", "4"]), ("timed", ["--timing", "--timing-repeats", "3"])):
            run_cli("ablate", *common, *extra, *(["--force"] if label == "timed" else []))
            with ResultsStore(root / "results", read_only=True) as store:
                runs: list[dict[str, Any]] = store.runs("cuda_facts")
            expect(len(runs) == 8 and all(r["status"] == "done" for r in runs), f"{label}: 8 done runs")
            for r in runs:
                peak = r["peak_memory_bytes"]
                print(
                    f"{label} {r['run_id']}: batch {r['batch_size']} pos {r['batch_position']} "
                    f"{r['batch_seconds']:.4f} s, peak {peak} B, timed {r['timed_median_s']} "
                    f"[{r['timed_min_s']}, {r['timed_max_s']}] x{r['timed_repeats']}, "
                    f"devices {r['record'].get('devices')}, gpu {r['execution'].get('gpu')}"
                )
                if on_gpu:
                    expect(peak is not None and dit_bytes <= peak <= card.total_memory, f"{label}: a real CUDA peak")
                    expect(r["execution"].get("gpu") == card.name, f"{label}: the execution facts name the GPU")
                else:
                    expect(peak is None and "gpu" not in r["execution"], f"{label}: no peak and no GPU on the CPU")
                expect(device in str(r["record"].get("devices")), f"{label}: the record names the {device} device")
                if label == "batched":
                    expect(r["batch_size"] == 4 and r["timed_median_s"] is None, "batched: batch 4, not timed")
                else:
                    lo, mid, hi = r["timed_min_s"], r["timed_median_s"], r["timed_max_s"]
                    expect(r["batch_size"] == 1 and r["timed_repeats"] == 3, "timed: batch 1, 3 repeats")
                    expect(0 < lo <= mid <= hi, "timed: min <= median <= max")
    where = "every run's peak between that and the card's memory" if on_gpu else "no peak recorded on the CPU"
    print(f"ok: DiT weights {dit_bytes} B; {where}")


if __name__ == "__main__":
    main()

"""Startup time of the light commands: wall seconds of each, against ``python -c pass``.

Every command runs in a fresh subprocess (``python -m llm_dit.cli ...``, what the ``llm-dit`` script runs), after
one untimed warm-up (it fills the caches a machine has after its first use: the tiny checkpoint, the tokenizer
cache); the table gives the median of ``--runs`` timed runs, the spread (min-max), the ratio to ``python -c pass``
and the exit status. ``--src DIR`` puts ``DIR`` first on ``PYTHONPATH``, so another source tree (for example landed
main before a change) is measured with the same interpreter and packages::

    git archive ad2af59 | tar -x -C /tmp/llm-dit-before
    python benchmarks/startup.py --src /tmp/llm-dit-before/src      # before
    python benchmarks/startup.py                                    # this tree (src/ next to this file)

Goals on a 2-core machine (issue 11): dry runs and rejections under 1.5 s, ``--help`` under 0.5 s. Timing varies
with the machine's load: run it when the machine is quiet, and compare trees within one run of this script.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parent / "src"

OUT = ["--output-dir", "{empty}"]  # an empty results directory
LONG = " ".join(f"mountain river castle {i}" for i in range(40))  # ~160 tokens
CAP = ["--max-text-tokens", "64", "--long-prompt-mode", "none"]
# (label, CLI arguments after "python -m llm_dit.cli", expected exit status)
COMMANDS: list[tuple[str, list[str], int]] = [
    ("llm-dit --help", ["--help"], 0),
    ("ablate --list-experiments", ["ablate", "--list-experiments"], 0),
    ("config show", ["config", "show"], 0),
    ("compare --list (empty results dir)", ["compare", "--list", *OUT], 2),
    ("ablate -e hidden_layer --dry-run (tiny)", ["ablate", "-e", "hidden_layer", "--dry-run", *OUT], 0),
    ("sweep shift_steps --quick --dry-run (tiny)", ["sweep", "shift_steps", "--quick", "--dry-run", *OUT], 0),
    ("reject: unknown experiment", ["ablate", "-e", "hidden_layr", *OUT], 2),
    ("reject: ablate --set steps=0", ["ablate", "-e", "hidden_layer", "--set", "steps=0", *OUT], 2),
    ("reject: ablate --seeds 1.5", ["ablate", "-e", "hidden_layer", "--seeds", "1.5", *OUT], 2),
    ("reject: generate --steps 0", ["generate", "a cat", "--steps", "0"], 2),
    ("reject: generate prompt over the token cap (tiny)", ["generate", LONG, *CAP, "-o", "{empty}/x.png"], 2),
]


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, int]:
    """Wall seconds and exit status of one subprocess (output discarded)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, done.returncode


def measure(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> tuple[list[float], int]:
    timed(argv, env, cwd)  # warm-up: OS file cache, the tiny checkpoint and tokenizer caches
    results = [timed(argv, env, cwd) for _ in range(runs)]
    return [seconds for seconds, _ in results], results[-1][1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    versions = []
    for package in ("torch", "transformers", "diffusers", "tokenizers"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} absent")
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {', '.join(versions)}; load {load}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--src", type=Path, default=DEFAULT_SRC, help="source tree to measure (put first on PYTHONPATH)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (after one warm-up)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    src = args.src.resolve()
    if not (src / "llm_dit" / "cli" / "__main__.py").is_file():
        parser.error(f"--src {src}: no llm_dit/cli/__main__.py there (give the folder that holds llm_dit/)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("FORCE_COLOR", None)
    with tempfile.TemporaryDirectory(prefix="llm-dit-startup-") as tmp:
        cwd = Path(tmp)
        empty = cwd / "results"
        empty.mkdir()
        baseline, _ = measure([sys.executable, "-c", "pass"], env, cwd, args.runs)
        base = statistics.median(baseline)
        print(f"source: {src}")
        print(f"machine: {machine()}")
        print(f"median of {args.runs} runs after a warm-up, subprocesses; ratio = median / python -c pass\n")
        print("| command | median s | min-max s | x python -c pass | exit |")
        print("|---|---|---|---|---|")
        print(f"| python -c pass | {base:.3f} | {min(baseline):.3f}-{max(baseline):.3f} | 1.0 | 0 |")
        for label, cli_args, expected in COMMANDS:
            argv = [sys.executable, "-m", "llm_dit.cli", *(a.format(empty=empty) for a in cli_args)]
            seconds, status = measure(argv, env, cwd, args.runs)
            median = statistics.median(seconds)
            flag = "" if status == expected else f" (expected {expected})"
            print(
                f"| {label} | {median:.3f} | {min(seconds):.3f}-{max(seconds):.3f} | {median / base:.1f} | "
                f"{status}{flag} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

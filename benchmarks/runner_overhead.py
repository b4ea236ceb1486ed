"""Runner overhead per image and batching speed-up, measured side by side in one run.

On the tiny model (CPU) or any checkpoint (--model-path): the same set of runs is generated
1. with the bare pipeline one request at a time,
2. with the bare pipeline in batches of --batch-size,
3. with the experiment runner (store, atomic PNG writes with records, transactions) at --batch-size.
It prints seconds per image of each, the batching speed-up (1 / 2) and the runner's overhead per image (3 - 2).

    python benchmarks/runner_overhead.py --size 256 --runs 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default=None, help="checkpoint (default: the built-in tiny model)")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=16, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is steadiest here)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from llm_dit.config import load_settings
    from llm_dit.experiments.model import Axis, AxisValue, Experiment
    from llm_dit.experiments.runner import ExperimentRunner, prepare_experiment, request_for
    from llm_dit.experiments.store import ResultsStore

    overrides = {"model_path": args.model_path} if args.model_path else {}
    settings = load_settings(None, None, overrides).settings
    # One prompt, one seed per run: runs differ in shift only, so all of them can share a batched forward.
    shifts = [round(1.0 + 0.25 * i, 2) for i in range(args.runs)]
    experiment = Experiment(
        name="runner_overhead",
        description="benchmark",
        seeds=(42,),
        prompt_ids=("animal_001",),
        prompt_category=None,
        max_prompts=None,
        base={"width": args.size, "height": args.size, "steps": args.steps},
        axes=(Axis("shift", tuple(AxisValue(str(s), {"shift": s}) for s in shifts), None),),
        source="benchmark",
    )
    import llm_dit.experiments.loader as experiment_loader

    original = experiment_loader.get_experiment
    experiment_loader.get_experiment = lambda name, experiment_file=None: experiment
    try:
        prepared = prepare_experiment("runner_overhead", settings=settings, batch_size=args.batch_size)
    finally:
        experiment_loader.get_experiment = original
    pipe = prepared.pipeline
    requests = [request_for(run) for run in prepared.runs]
    pipe.generate_batch(requests[:1])  # load models, warm up kernels and the encoding cache
    pipe.precompute_encodings(requests)

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) / len(requests)

    one_by_one = timed(lambda: [pipe.generate_batch([r]) for r in requests])
    b = args.batch_size
    batched = timed(lambda: [pipe.generate_batch(requests[i : i + b]) for i in range(0, len(requests), b)])
    with tempfile.TemporaryDirectory() as tmp:
        runner = ExperimentRunner(pipe, ResultsStore(Path(tmp)), batch_size=b)
        with_runner = timed(lambda: runner.run(experiment, prepared.runs, settings))

    print(f"model: {pipe.model_path}, {args.size}x{args.size}, {args.steps} steps, {len(requests)} images")
    print(f"pipeline, one by one        {one_by_one:.4f} s/image")
    print(f"pipeline, batch {b:<3d}        {batched:.4f} s/image")
    print(f"runner,   batch {b:<3d}        {with_runner:.4f} s/image")
    print(f"batching speed-up           {one_by_one / batched:.2f}x")
    print(f"runner overhead per image   {with_runner - batched:+.4f} s ({(with_runner / batched - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()

"""``llm-dit profile``: encode and generation time and peak memory on the current device."""

from __future__ import annotations

import resource
import statistics
import time
from typing import Any

import torch


def _peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    # ru_maxrss is KiB on Linux: the process's peak resident memory, models included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _time(fn: Any, repeats: int, device: torch.device) -> dict[str, float]:
    fn()  # warm-up: kernels, allocator, oneDNN primitives
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"mean_s": statistics.fmean(times), "min_s": min(times), "repeats": repeats}


PROFILE_PROMPTS = {
    "short": "A tabby cat sleeping on a windowsill",
    "medium": " ".join(["A detailed scene of a quiet harbour town at dawn, fishing boats, gulls, warm light."] * 6),
    "long": " ".join(["A sprawling fantasy city with towers, bridges, markets and canals under a violet sky."] * 60),
}


def run_profile(pipeline: Any, generation: dict[str, Any], *, repeats: int = 3) -> dict[str, Any]:
    """Time encode (short, medium, long prompt) and full generation (encode + sample + decode, nothing cached) with
    the ``generation`` parameters (the fields of GenerationSettings but seed and output_dir); report peak memory."""
    encoder = pipeline.encoder
    device = next(encoder.model.parameters()).device
    dit_device = next(pipeline.transformer.parameters()).device
    if dit_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dit_device)
    out: dict[str, Any] = {"encode": {}}
    for label, text in PROFILE_PROMPTS.items():
        tokens = encoder.tokenize(text)[0].token_count
        timing = _time(lambda text=text: encoder.encode(text), repeats, device)
        out["encode"][label] = {"tokens": tokens, **timing}
    # generate_batch resets CUDA peak stats per batch: keep the encode phase's peak (ru_maxrss never drops).
    encode_peak = _peak_memory_gib(dit_device) if dit_device.type == "cuda" else 0.0

    def generate() -> None:
        # End to end: the pipeline caches encodings across calls, so drop them or only the warm-up would encode.
        pipeline.clear_encoding_cache()
        pipeline.generate(PROFILE_PROMPTS["short"], seed=0, **generation)

    timing = _time(generate, repeats, dit_device)
    out["generate"] = {**generation, **timing}
    out["peak_memory_gib"] = max(encode_peak, _peak_memory_gib(dit_device))
    out["peak_memory_kind"] = "cuda max_memory_allocated" if dit_device.type == "cuda" else "process peak RSS"
    out["devices"] = {"encoder": str(device), "dit": str(dit_device)}
    return out

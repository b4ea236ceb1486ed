"""Speed settings of the DiT, applied once per loaded model: attention backend, FP8 linear layers, torch.compile.

Order matters: the attention backend is a module attribute the compiled code reads, and FP8 swaps the linear layers'
weights for torchao tensor subclasses, which torch.compile must trace, so compile comes last.

- ``attention_backend``: diffusers' dispatcher (``ModelMixin.set_attention_backend``); ``auto`` is ``_native_cudnn``
  on CUDA (from the earlier H200 measurements quoted in docs/speed.md) and ``native`` (SDPA's own choice) elsewhere.
- ``fp8``: torchao's dynamic float8 activations and weights (``Float8DynamicActivationFloat8WeightConfig``, per row
  or per tensor) on the ``nn.Linear`` layers inside the transformer blocks (``_repeated_blocks``, their adaLN
  modulation included); the embedders and the final layer stay in the model's dtype. Opt-in: it changes images, so it
  is part of run ids (:func:`llm_dit.generation.checks.resolved_numerics`).
- ``compile``: ``regional`` compiles each transformer block's forward (diffusers' ``compile_repeated_blocks``): one
  compiled graph serves every block, so the first call is short and a new caption length or resolution costs at most
  one recompile per block shape kind (automatic dynamic shapes mark changing sizes dynamic after the first change);
  ``full`` compiles the whole model (faster per forward, but it recompiles on new shapes).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_dit.config import PipelineSettings
from llm_dit.errors import LlmDitError

if TYPE_CHECKING:
    from torch import nn


# Measured on one H200 (torch 2.11, inductor, full-size DiT; ../shared REFERENCE-WAVE2, to be re-measured by
# benchmarks/gpu_speed.py): regional compile's first forward, and what one more caption length or resolution cost.
REGIONAL_FIRST_CALL_S = 17.0
REGIONAL_NEW_SHAPE_S = 1.0


def compile_estimate(chosen: Acceleration, shapes: int) -> tuple[float | None, str]:
    """(seconds a run of ``shapes`` distinct sampling shapes spends compiling, or None when unknown; a sentence)."""
    if chosen.compile == "none":
        return 0.0, "no compile"
    if chosen.compile == "regional" and chosen.compile_backend == "inductor":
        seconds = REGIONAL_FIRST_CALL_S + REGIONAL_NEW_SHAPE_S * max(0, shapes - 1)
        return seconds, (
            f"regional compile: ~{REGIONAL_FIRST_CALL_S:.0f} s on the first DiT forward, ~{REGIONAL_NEW_SHAPE_S:.0f} s "
            f"once per further sampling shape (resolution, steps; H200 measurements): {shapes} here"
        )
    return None, f"{chosen.compile} compile with {chosen.compile_backend}: first-call time not measured"


@dataclass(frozen=True)
class Acceleration:
    """The resolved speed settings of one DiT (what the record and execution facts say)."""

    compile: str  # none | regional | full
    compile_backend: str
    compile_mode: str
    attention_backend: str
    fp8: str  # none | rowwise | tensorwise

    def facts(self) -> dict[str, str]:
        return {
            "compile": self.compile if self.compile == "none" else f"{self.compile}/{self.compile_backend}",
            "compile_mode": self.compile_mode,
            "attention_backend": self.attention_backend,
            "fp8": self.fp8,
        }


def resolve(settings: PipelineSettings, device_type: str) -> Acceleration:
    """``settings`` with ``auto`` resolved for a DiT on ``device_type`` (no torch needed)."""
    on_cuda = device_type == "cuda"
    compile_ = settings.compile if settings.compile != "auto" else ("regional" if on_cuda else "none")
    backend = settings.attention_backend
    if backend == "auto":
        backend = "_native_cudnn" if on_cuda else "native"
    if settings.fp8 != "none" and not on_cuda:
        raise LlmDitError(
            f"fp8 = {settings.fp8!r} needs a CUDA GPU with FP8 matmuls (compute capability 8.9+), but the DiT runs on "
            f'{device_type}; set [default.pipeline] fp8 = "none" or run on such a GPU'
        )
    if settings.fp8 != "none" and importlib.util.find_spec("torchao") is None:
        raise LlmDitError(
            f"fp8 = {settings.fp8!r} needs torchao, which is not installed: pip install 'llm-dit[fp8]' (torchao "
            '0.17/0.18, torch >= 2.11), or set [default.pipeline] fp8 = "none"'
        )
    if backend in ("_native_cudnn", "_native_flash", "_native_efficient") and not on_cuda:
        raise LlmDitError(
            f"attention_backend = {backend!r} is a CUDA kernel, but the DiT runs on {device_type}; use native or auto"
        )
    return Acceleration(compile_, settings.compile_backend, settings.compile_mode, backend, settings.fp8)


def block_linears(transformer: nn.Module) -> list[str]:
    """Qualified names of the ``nn.Linear`` layers inside the model's repeated transformer blocks."""
    from torch import nn

    kinds = set(getattr(transformer, "_repeated_blocks", ()) or ())
    names: list[str] = []
    for name, module in transformer.named_modules():
        if type(module).__name__ in kinds:
            names += [f"{name}.{sub}" for sub, child in module.named_modules() if isinstance(child, nn.Linear)]
    return names


def quantize_fp8(transformer: nn.Module, mode: str) -> int:
    """Swap the block linears' weights for torchao float8 (dynamic activation scales); returns how many."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_
    except ImportError as exc:
        raise LlmDitError(
            f"fp8 = {mode!r} needs torchao (pip install 'llm-dit[fp8]': torchao 0.17/0.18, torch >= 2.11); it is not "
            f"importable: {exc}"
        ) from None
    chosen = set(block_linears(transformer))
    granularity = PerRow() if mode == "rowwise" else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(granularity=granularity)
    quantize_(transformer, config, filter_fn=lambda module, name: name in chosen)
    return len(chosen)


def accelerate(transformer: nn.Module, settings: PipelineSettings) -> Acceleration:
    """Apply ``settings`` to a loaded DiT in place (attention backend, FP8, compile) and return what was applied."""
    device = next(transformer.parameters()).device
    chosen = resolve(settings, device.type)
    if chosen.attention_backend != "native":
        transformer.set_attention_backend(chosen.attention_backend)
    if chosen.fp8 != "none":
        quantize_fp8(transformer, chosen.fp8)
    options: dict[str, Any] = {"backend": chosen.compile_backend}
    if chosen.compile_mode != "default":
        options["mode"] = chosen.compile_mode
    if chosen.compile == "regional":
        transformer.compile_repeated_blocks(fullgraph=True, **options)
    elif chosen.compile == "full":
        transformer.compile(fullgraph=True, **options)
    return chosen


def recompile_counts() -> dict[str, int]:
    """torch._dynamo's counters of compiled frames and recompiles so far in this process (for tests and benchmarks:
    a sweep must not keep recompiling after its first shapes)."""
    from torch._dynamo.utils import counters

    stats, recompiles = counters["stats"], counters["recompiles"]
    return {"unique_graphs": int(stats["unique_graphs"]), "recompiles": int(sum(recompiles.values()))}

"""llm-dit: controlled, reproducible experiments on LLM-conditioned diffusion transformers.

The public API is imported lazily so that ``import llm_dit`` (and the CLI's config checks) stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LlmDitPipeline": "llm_dit.generation.pipeline",
    "GenerationRequest": "llm_dit.generation.request",
    "GenerationResult": "llm_dit.generation.pipeline",
    "ZImageTextEncoder": "llm_dit.conditioning.text_encoder",
    "EncodedPrompt": "llm_dit.conditioning.text_encoder",
    "format_prompt": "llm_dit.conditioning.prompt",
    "load_settings": "llm_dit.config",
    "Settings": "llm_dit.config",
    "LlmDitError": "llm_dit.errors",
    "read_record": "llm_dit.generation.image",
    "load_results": "llm_dit.experiments.store",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'llm_dit' has no attribute {name!r}")

"""llm-dit: controlled, reproducible experiments on LLM-conditioned diffusion transformers."""

__version__ = "0.1.0"

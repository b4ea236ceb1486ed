"""The ``llm-dit`` command line: a thin shell over the Python API, one module per command group.

``main`` (the ``llm-dit`` script and ``python -m llm_dit.cli``) and ``app`` come from ``entrypoint``; shared options
and their parsers are in ``options``, stderr messages in ``terminal``. Commands: ``generate`` (generate, encode,
profile), ``ablate`` (ablate, sweep), ``metrics`` (metrics, embed-stats), ``compare``, ``plot``, ``view``,
``tiny_model``, ``config`` (config show).
"""

from llm_dit.cli.entrypoint import app, main

__all__ = ["app", "main"]

"""The ``llm-dit`` Typer app, every command registered on it (in the order ``llm-dit --help`` lists them), and
``main``, the script's entry point.

Every command resolves its settings first (CLI > config profile > [default] > built-in defaults) and checks
paths, values and prompts before any model loads; user errors print one line and exit with status 2.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from llm_dit.cli import ablate, compare, embedding, generate, metrics, plot, report, sources, study, tiny_model, view
from llm_dit.cli.config import config_app
from llm_dit.cli.terminal import error
from llm_dit.errors import LlmDitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts contain literal [sections]
    help="Controlled, reproducible experiments on LLM-conditioned diffusion transformers (Z-Image-Turbo).",
)

COMMANDS: tuple[tuple[str, Callable[..., None]], ...] = (
    ("generate", generate.generate),
    ("encode", generate.encode),
    ("metrics", metrics.metrics_cmd),
    ("content-preservation", metrics.content_preservation_cmd),
    ("ablate", ablate.ablate),
    ("sweep", ablate.sweep),
    ("caption-study", study.caption_study_cmd),
    ("embed-stats", metrics.embed_stats),
    ("compare-embedding-models", embedding.compare_embedding_models_cmd),
    ("caption", sources.caption_cmd),
    ("reference-stats", sources.reference_stats_cmd),
    ("profile", generate.profile_cmd),
    ("tiny-model", tiny_model.tiny_model),
    ("compare", compare.compare_cmd),
    ("view", view.view_cmd),
    ("plot", plot.plot_cmd),
    ("report", report.report_cmd),
)
for _name, _command in COMMANDS:
    app.command(_name)(_command)
app.add_typer(config_app, name="config")


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors become one line on stderr and exit status 2, with no traceback.

    Usage errors, --help and Ctrl-C are left to Typer's own (standalone) handling, which exits with
    click's codes; typer vendors its own click, so its exceptions are not caught here.
    """
    try:
        app(args=argv, prog_name="llm-dit")
    except LlmDitError as exc:
        error(str(exc))
        return 2
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0

"""The ``llm-dit config`` group: ``config show`` prints the resolved settings, each value with its source."""

from __future__ import annotations

import typer

from llm_dit.cli.options import ConfigOpt, ProfileOpt

config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None) -> None:
    """Print the resolved configuration (TOML), each value with its source."""
    from llm_dit.config import load_settings, render_settings

    typer.echo(render_settings(load_settings(config, profile)))

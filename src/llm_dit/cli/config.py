"""The ``llm-dit config`` group: ``config show`` prints the resolved settings, each value with its source."""

from __future__ import annotations

from typing import Any

import typer

from llm_dit.cli.options import ConfigOpt, FormatOpt, ProfileOpt
from llm_dit.cli.terminal import check_format, write_csv, write_json

config_app = typer.Typer(no_args_is_help=True, help="Inspect configuration.")

# config show --format json/csv: one record per setting, in the order of the TOML form (docs/configuration.md).
SETTING_FIELDS = ("key", "value", "source")


@config_app.command("show")
def config_show(config: ConfigOpt = None, profile: ProfileOpt = None, output_format: FormatOpt = "table") -> None:
    """Print the resolved configuration, each value with its source: commented TOML (--format table, the
    default), or a key/value/source record per setting (json, csv)."""
    from llm_dit.config import load_settings, render_settings

    check_format(output_format)
    resolved = load_settings(config, profile)
    if output_format == "table":
        typer.echo(render_settings(resolved))
        return
    records = setting_records(resolved)
    if output_format == "json":
        write_json(records)
    else:
        write_csv(SETTING_FIELDS, records)


def setting_records(resolved: Any) -> list[dict[str, Any]]:
    """``{"key": dotted key, "value": its JSON value (null = unset), "source": default | FILE:[profile] |
    override}`` for every setting of ``resolved`` (a ResolvedSettings), in its ``sources`` order."""
    values = resolved.settings.model_dump(mode="json")
    records = []
    for key, source in resolved.sources.items():
        value: Any = values
        for part in key.split("."):
            value = value[part]
        records.append({"key": key, "value": value, "source": source})
    return records

"""The ``llm-dit view`` command: the read-only results browser. Imports stay light: the viewer (fastapi, uvicorn)
is imported inside the command."""

from __future__ import annotations

from typing import Annotated

import typer

from llm_dit.cli.options import ResultsDirOpt
from llm_dit.experiments.store import DEFAULT_ROOT

# Repeated here rather than imported from llm_dit.viewer: that package imports fastapi, and `llm-dit --help`
# should not pay for it. tests/test_viewer_api.py checks that both agree.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7861


def view_cmd(
    output_dir: ResultsDirOpt = DEFAULT_ROOT,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on; anything but loopback exposes your results.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option("--port", help="TCP port (0 = any free port).")] = DEFAULT_PORT,
    rate: Annotated[
        bool,
        typer.Option(
            "--rate",
            help="Rating mode: blind A/B judgements at /rate, stored in <results>/<experiment>/preferences.jsonl.",
        ),
    ] = False,
    rater: Annotated[
        str | None, typer.Option("--rater", help="The rater name the rating page starts with (needs --rate).")
    ] = None,
) -> None:
    """Browse results in a web browser: grids, slider, A/B toggle and diff overlays (read-only; Ctrl-C stops)."""
    from llm_dit.errors import LlmDitError
    from llm_dit.experiments.store import ResultsStore

    # Bad combinations first, in one line each, before the store is even opened.
    if rater is not None and not rate:
        raise LlmDitError("--rater only applies to rating mode; add --rate")
    if rater is not None and (not rater.strip() or len(rater) > 100 or any(ord(c) < 32 for c in rater)):
        raise LlmDitError(f"--rater must be a name of 1-100 printable characters, got {rater!r}")
    if rate:
        from llm_dit.viewer.server import is_loopback

        if not is_loopback(host):
            raise LlmDitError(f"--rate writes judgements and listens on loopback only; drop --host {host}")

    # Here, before fastapi/uvicorn are even imported: no database, a damaged one or one of a newer schema is one
    # line now, not a viewer that starts and then answers every request with a 500.
    ResultsStore(output_dir, read_only=True).close()
    from llm_dit.viewer.server import is_loopback, serve

    if not is_loopback(host):
        typer.echo(
            f"warning: --host {host} makes the viewer reachable from other machines; it has no authentication "
            "and shows every result in this directory",
            err=True,
        )

    def announce(url: str) -> None:
        if rate:
            typer.echo(
                f"llm-dit viewer: rating {output_dir} at {url}rate (judgements go to preferences.jsonl beside each "
                "experiment's images; results stay read-only; Ctrl-C to stop)"
            )
        else:
            typer.echo(f"llm-dit viewer: serving {output_dir} at {url} (read-only; Ctrl-C to stop)")

    serve(output_dir, host, port, announce=announce, rate=rate, rater=rater)

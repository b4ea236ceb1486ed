"""The options several commands take with the same flags and help text, declared once (a command's default stays
in its signature), and the parsers of option values several commands share: comma-separated lists, ``--set
KEY=VALUE``, ``--metric``, ``--model tiny`` and the settings overrides built from a command's options.

Options that only one command takes, or that differ in flags or help between commands (``--prompt-ids``,
``--overwrite`` of plot and compare), stay with their commands. Nothing here imports a model library, so
``--help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from llm_dit.errors import LlmDitError

DEVICE_HELP = "auto | cpu | cuda[:N]."
DTYPE_HELP = "auto | bfloat16 | float32."
RESULTS_EXPERIMENT_HELP = "Experiment name in the results directory."

# Settings: the config file and profile, and the model (flag names follow the seeds' scripts).
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="TOML config file with profiles.")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", help="Config profile (inherits [default]).")]
ModelPathOpt = Annotated[
    str | None, typer.Option("--model-path", help="Z-Image checkpoint directory (diffusers layout).")
]
ModelOpt = Annotated[str | None, typer.Option("--model", help="'tiny' = the built-in tiny random model.")]

# The text encoder (generate, encode; embed-stats takes only the device and dtype).
HiddenLayerOpt = Annotated[
    int | None, typer.Option("--hidden-layer", help="Encoder hidden state: -37..36, -2 = official.")
]
LayerWeightsOpt = Annotated[
    str | None, typer.Option("--layer-weights", help='Blend layers of one forward, e.g. "-2:0.7,-5:0.3".')
]
SystemPromptOpt = Annotated[str | None, typer.Option("--system-prompt", help="System turn ('' = none).")]
ThinkBlockOpt = Annotated[
    str | None, typer.Option("--think-block", help="'none' (official), 'empty', or the text of a think block.")
]
LongModeOpt = Annotated[
    str | None,
    typer.Option("--long-prompt-mode", help="truncate | interpolate | pool | attention_pool | none."),
]
MaxTokensOpt = Annotated[
    int | None, typer.Option("--max-text-tokens", help="Caption token cap, 1..1504 (512 = diffusers).")
]
PaddingOpt = Annotated[
    str | None, typer.Option("--padding", help="Encoder batch padding: diffusers (>= 512, exact) | longest.")
]
EncoderDeviceOpt = Annotated[str | None, typer.Option("--encoder-device", help=DEVICE_HELP)]
EncoderDtypeOpt = Annotated[str | None, typer.Option("--encoder-dtype", help=DTYPE_HELP)]

# Output files (encode, embed-stats, profile; generate's --overwrite names its --output).
OverwriteOpt = Annotated[bool, typer.Option("--overwrite/--no-overwrite", help="Replace an existing output file.")]

# Prompt selection from the library (ablate, embed-stats).
PromptCategoryOpt = Annotated[str | None, typer.Option("--prompt-category", help="A library category.")]
MaxPromptsOpt = Annotated[int | None, typer.Option("--max-prompts", help="Keep the first N prompts.")]

# Experiments (ablate, sweep) and their results (also metrics, compare, plot, view).
ResultsDirOpt = Annotated[Path, typer.Option("--output-dir", help="Results directory.")]
SeedsOpt = Annotated[str | None, typer.Option("--seeds", help="Comma-separated seeds.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a parameter for every run: key=value (repeatable).")
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", help="Runs per batched DiT forward.")]
ImageOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--image",
        help="An input image of the experiment, replacing its own (repeatable: {image}, {image2}, ... in order).",
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan; write nothing.")]
RegenerateOpt = Annotated[bool, typer.Option("--force", help="Regenerate runs already done.")]
ComputeMetricsOpt = Annotated[
    bool,
    typer.Option("--compute-metrics", help="Compute metrics after generating (weight-free + configured models)."),
]
MetricOpt = Annotated[
    list[str] | None, typer.Option("--metric", help="A metric to compute (repeatable or comma-separated).")
]


# What parse_csv's error shows for a cast: an example of the values it accepts.
_CSV_EXAMPLES: dict[Any, str] = {int: "integers, e.g. 42,43,44", float: "numbers, e.g. 1,0.6,0.3"}


def parse_csv(text: str | None, flag: str, cast: Callable[[str], Any] = str) -> list[Any] | None:
    """``a,b,c`` -> [cast(a), cast(b), cast(c)] (blanks dropped); None when the option was not given."""
    if text is None:
        return None
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        kind = _CSV_EXAMPLES.get(cast, "values")
        raise LlmDitError(f"{flag} {text!r}: expected comma-separated {kind}") from exc


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """``--set key=value`` (TOML value syntax; bare words are strings) -> flat experiment parameters."""
    from llm_dit.config import parse_scalar, split_assignment

    out: dict[str, Any] = {}
    for item in items or []:
        key, raw = split_assignment(item, "--set", "key=value, e.g. --set steps=4 or --set think_block=empty")
        out[key] = parse_scalar(raw)
    return out


def run_parameter_sets(items: list[str] | None) -> tuple[dict[str, Any], str | None]:
    """``generate --set NAME=VALUE``: the names of experiment files and ``ablate --set`` (plus ``seed``: generate
    makes one image) as dotted settings overrides, and the ``token_manipulation`` if one is set.

    Values are parsed as ``ablate --set`` parses them and checked by the one schema when the settings resolve
    (errors name ``--set NAME=VALUE``); an unknown name is an error with the nearest parameter.
    """
    from llm_dit.experiments.model import SETTABLE_PARAMETERS, TOKEN_MANIPULATION, settings_section
    from llm_dit.experiments.planner import unknown_parameter

    overrides: dict[str, Any] = {}
    manipulation: str | None = None
    errors: list[str] = []
    for name, value in parse_sets(items).items():
        flat = name.rpartition(".")[2]
        if name == TOKEN_MANIPULATION:
            manipulation = value
        elif name == "seed" or name in SETTABLE_PARAMETERS:
            overrides[f"{settings_section(name)}.{name}"] = value
        elif flat != name and (flat == "seed" or flat in SETTABLE_PARAMETERS):
            errors.append(f"--set {name}: use the flat name '{flat}' (--set {flat}=...)")
        else:
            errors.append(f"--set {name}: {unknown_parameter(name)}")
    if errors:
        raise LlmDitError("\n".join(errors))
    return overrides, manipulation


def parse_metric_names(items: list[str] | None) -> list[str]:
    """``--metric`` values, each repeatable or comma-separated, as one list of names."""
    return [name for item in items or [] for name in parse_csv(item, "--metric") or []]


def chosen_model_path(model_path: str | None, model: str | None) -> str | None:
    """``--model tiny`` or ``--model-path DIR`` (at most one) as the settings' model_path; None = neither."""
    if model is not None and model != "tiny":
        raise LlmDitError(f"--model {model!r}: only 'tiny' is built in; give a checkpoint with --model-path DIR")
    if model is not None and model_path is not None:
        raise LlmDitError("give --model tiny or --model-path DIR, not both")
    return "tiny" if model == "tiny" else model_path


def settings_overrides(ctx: typer.Context) -> dict[str, Any]:
    """A command's parsed options as dotted settings overrides, in the order the command declares them.

    Every option that declares a config flag (config.CLI_FLAGS, matched on the flags themselves, so a parameter's
    Python name does not matter) and was given (not None) is an override; ``--model tiny`` stands for
    ``--model-path tiny``. Only for commands whose every such option means the setting (ablate's --output-dir is
    the results directory, not generation.output_dir).
    """
    from llm_dit.config import CLI_FLAGS

    key_of_flag = {flag: key for key, flag in CLI_FLAGS.items()}
    values: dict[str, Any] = {}
    model: str | None = None
    for param in ctx.command.params:
        value = ctx.params.get(param.name) if param.name else None
        if "--model" in param.opts:
            model = value
        key = next((key_of_flag[flag] for flag in param.opts if flag in key_of_flag), None)
        if key is not None:
            values[key] = value
    if model is not None or "model_path" in values:
        values["model_path"] = chosen_model_path(values.get("model_path"), model)
    out = {key: value for key, value in values.items() if value is not None}
    if "generation.sigmas" in out:
        # "" clears a profile's sigmas (back to steps + shift), as in TOML.
        out["generation.sigmas"] = parse_csv(out["generation.sigmas"], "--sigmas", float) or ""
    return out


# Listings and info (ablate --list-*, metrics --list, compare --list/--info, config show, embed-stats): checked by
# llm_dit.cli.terminal.check_format, printed by terminal.print_records.
FormatOpt = Annotated[
    str, typer.Option("--format", help="table | json | csv (json, csv: full values on stdout, unstyled).")
]

"""Planning: an :class:`~llm_dit.experiments.model.Experiment` expanded into validated :class:`PlannedRun` rows.

Owns the parameter checks (also used by the experiment loader), the merge of parameter levels, run ids and
image names. :func:`plan` expands an experiment over prompts x combinations x seeds into runs whose parameters
are fully resolved and validated against the one schema in :mod:`llm_dit.config`, so a bad value stops the
whole experiment before any model loads. It must not import torch, the runner or the experiment loader; the
prompt library is imported lazily, only by plans that use token manipulations.

Precedence (highest wins): axis values > overrides (CLI) > experiment ``[base]`` > settings (config
profile) > built-in defaults. Two pairs of parameters replace each other, as in the config and the encoder:
a level that sets ``hidden_layer`` (without ``layer_weights``) clears a blend from a lower level, and a level
that sets ``steps`` or ``shift`` (without ``sigmas``) clears explicit sigmas from a lower level; a level that
sets ``sigmas`` without ``steps`` derives ``steps`` from them. An override of a swept parameter is therefore
ignored on that axis's runs, with no error: :func:`swept_overrides` names them so the CLI can say so. A baseline
(``Experiment.baseline``) takes the same levels but the conditioning of the built-in defaults and its own table only
(:func:`baseline_overrides` names the overrides it does not take). Placeholders of input images are replaced first
(``Experiment.with_images``).

Resolved params record an inert value as ``None`` (the value "does not apply"), so the same image gets the
same parameters and id whatever an unused setting held: ``hidden_layer`` when ``layer_weights`` is set,
``shift`` when explicit ``sigmas`` are set, ``negative_prompt``, ``cfg_normalization`` and ``cfg_truncation``
when ``guidance_scale`` is 0 (CFG off). A shift no level sets is the checkpoint's (``plan(shift_default=...)``);
``shift_source`` (not a parameter: it names the level, see :data:`SHIFT_LEVELS`) records where it came from.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from llm_dit.config import (
    ConditioningSettings,
    EncoderSettings,
    GenerationSettings,
    Settings,
    build_section,
    check_limits,
    conditioning_params,
    conditioning_problem,
    count_steps,
    generation_problem,
    parse_sigmas,
    toml_value,
)
from llm_dit.constants import (
    DEFAULT_CFG_NORMALIZATION,
    DEFAULT_CFG_TRUNCATION,
    DEFAULT_SHIFT,
    MAX_SEED,
    SHIFT_FROM_CONFIG,
    SHIFT_FROM_DEFAULT,
    SHIFT_FROM_EXPERIMENT,
    SHIFT_FROM_FLAG,
)
from llm_dit.errors import ConfigError, LlmDitError, closest
from llm_dit.experiments.model import (
    CONDITIONING_PARAMETERS,
    ENCODER_PARAMETERS,
    GENERATION_PARAMETERS,
    SETTABLE_PARAMETERS,
    TOKEN_MANIPULATION,
    Experiment,
    PlannedRun,
    file_label,
    jsonable,
    value_label,
)
from llm_dit.files import IMAGE_SETTINGS

if TYPE_CHECKING:  # prompts.py is imported lazily: planning must stay light whatever it grows to import
    from llm_dit.experiments.prompts import Prompt

__all__ = [
    "NOT_PARAMETERS",
    "REPLACES",
    "baseline_overrides",
    "compute_run_id",
    "default_params",
    "image_name",
    "parameter_errors",
    "plan",
    "swept_overrides",
    "unknown_parameter",
]

# --------------------------------------------------------------------------------------------------
# Parameter checks (the loader checks files with them, the planner checks overrides)
# --------------------------------------------------------------------------------------------------

_SETTINGS_HINT = "it is not an experiment parameter; set it in the config profile or on the command line"
# Names people reach for that are not experiment parameters, with where the setting really lives.
NOT_PARAMETERS: dict[str, str] = {
    "seed": "seeds come from the seeds list: seeds = [...] at the top of the file",
    "device": _SETTINGS_HINT,
    "torch_dtype": _SETTINGS_HINT,
    "vae_device": _SETTINGS_HINT,
    "vae_dtype": _SETTINGS_HINT,
    "model_path": _SETTINGS_HINT,
    "output_dir": "the output directory is chosen when the experiment runs, not by the experiment",
    "enable_thinking": 'use think_block = "none" | "empty" | "<text>"',
    "force_think_block": 'use think_block = "none" | "empty" | "<text>"',
    "thinking_content": 'use think_block = "none" | "empty" | "<text>"',
    "num_inference_steps": "use steps",
    "max_sequence_length": "use max_text_tokens (512 = diffusers' cap)",
    "hidden_layers": "use hidden_layer (one layer) or layer_weights (a blend)",
    "cfg_scale": "use guidance_scale",
    "compression_mode": "use long_prompt_mode",
}


def _manipulation_names() -> tuple[str, ...]:
    # Lazy: prompts.py may grow heavier imports; only experiments that use manipulations pay for them.
    from llm_dit.experiments import prompts

    names = getattr(prompts, "MANIPULATIONS", None)
    if names is None:
        raise ConfigError(
            "token_manipulation needs llm_dit.experiments.prompts.MANIPULATIONS, which this installation lacks"
        )
    return tuple(names)


def _check_manipulation(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"token_manipulation must be a string (got {toml_value(value)})")
    names = _manipulation_names()
    if value not in names:
        hint = closest(value, names)
        extra = f"; did you mean '{hint}'?" if hint else ""
        raise ConfigError(f"token_manipulation '{value}' is not valid; use one of: {', '.join(names)}{extra}")
    return value


def unknown_parameter(key: str) -> str:
    """The message for a name that is not a settable parameter: its real home, or the nearest parameter."""
    if key in NOT_PARAMETERS:
        return f"'{key}' is not an experiment parameter: {NOT_PARAMETERS[key]}"
    hint = closest(key, SETTABLE_PARAMETERS)
    if hint:
        return f"unknown parameter '{key}'; did you mean '{hint}'?"
    return f"unknown parameter '{key}'; parameters: {', '.join(SETTABLE_PARAMETERS)}"


def _check_value(key: str, value: Any) -> None:
    """Validate one parameter on its own (raises ConfigError with the schema's message)."""
    if key == TOKEN_MANIPULATION:
        _check_manipulation(value)
    elif key in ENCODER_PARAMETERS:
        build_section(EncoderSettings, {key: value})
    elif key in CONDITIONING_PARAMETERS:
        build_section(ConditioningSettings, {key: value})
    else:
        build_section(GenerationSettings, {key: value})


def parameter_errors(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each unknown name or invalid value of a partial parameter set."""
    out: list[tuple[str, str]] = []
    valid: dict[str, Any] = {}
    for key, value in values.items():
        if key not in SETTABLE_PARAMETERS:
            out.append((key, unknown_parameter(key)))
            continue
        try:
            _check_value(key, value)
        except ConfigError as exc:
            out.append((key, str(exc)))
            continue
        valid[key] = value
    if "steps" in valid and "sigmas" in valid:  # the one pair the schema checks together
        try:
            build_section(GenerationSettings, {"steps": valid["steps"], "sigmas": valid["sigmas"]})
        except ConfigError as exc:
            out.append(("steps", str(exc)))
    return out


# --------------------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------------------


def _sets_sigmas(value: Any) -> bool:
    try:
        return parse_sigmas(value) is not None
    except ValueError:
        return True  # invalid: keep it, so validation reports it


def _merge(layers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge parameter layers (last wins), applying the replace rules of the module docstring."""
    merged: dict[str, Any] = {}
    for layer in layers:
        if "hidden_layer" in layer and "layer_weights" not in layer:
            merged["layer_weights"] = None
        if ("steps" in layer or "shift" in layer) and "sigmas" not in layer:
            merged["sigmas"] = None
        for name, other in (("vl_alpha", "vl_alpha_schedule"), ("vl_alpha_schedule", "vl_alpha")):
            if layer.get(name) is not None and other not in layer:  # one alpha per step or one for all, not both
                merged[other] = None
        if "sigmas" in layer and "steps" not in layer and _sets_sigmas(layer["sigmas"]):
            try:
                merged["steps"] = count_steps(parse_sigmas(layer["sigmas"]) or [])
            except ValueError:
                merged.pop("steps", None)
        merged.update(layer)
    return merged


def _settings_layer(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {k: getattr(settings.encoder, k) for k in ENCODER_PARAMETERS}
    out.update({k: getattr(settings.conditioning, k) for k in CONDITIONING_PARAMETERS})
    out.update({k: getattr(settings.generation, k) for k in GENERATION_PARAMETERS if k != "seed"})
    out[TOKEN_MANIPULATION] = None
    return out


def _resolve(merged: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Validated, canonical flat params (raises ConfigError with the schema's message)."""
    encoder = build_section(EncoderSettings, {k: merged[k] for k in ENCODER_PARAMETERS if k in merged})
    generation = build_section(
        GenerationSettings, {**{k: merged[k] for k in GENERATION_PARAMETERS if k in merged}, "seed": seed}
    )
    conditioning = build_section(ConditioningSettings, {k: merged[k] for k in CONDITIONING_PARAMETERS if k in merged})
    problem = conditioning_problem(conditioning) or generation_problem(generation)
    if problem is not None:
        raise ConfigError(f"{problem[0]}: {problem[1]}")
    manipulation = merged.get(TOKEN_MANIPULATION)
    if manipulation is not None:
        _check_manipulation(manipulation)
    params: dict[str, Any] = {k: getattr(encoder, k) for k in ENCODER_PARAMETERS}
    params.update(conditioning_params(conditioning))
    params.update({k: getattr(generation, k) for k in GENERATION_PARAMETERS})
    params["strength"] = generation.resolved_strength  # the default made explicit with an init image
    params[TOKEN_MANIPULATION] = manipulation
    # Inert values become None, so they can neither differentiate run ids nor mislead a reader.
    if params["layer_weights"] is not None:
        params["hidden_layer"] = None
    if params["sigmas"] is not None:
        params["shift"] = None
    if params["guidance_scale"] == 0:
        params["negative_prompt"] = None
        params["cfg_normalization"] = None
        params["cfg_truncation"] = None
    return params


# A run's shift comes from the last level that sets it. plan()'s levels are the settings (config profile), the
# experiment's base, the overrides (--set) and then the axis values (the experiment again); no level at all
# means plan()'s shift_default (the checkpoint's scheduler shift).
SHIFT_LEVELS: tuple[str, ...] = (SHIFT_FROM_CONFIG, SHIFT_FROM_EXPERIMENT, SHIFT_FROM_FLAG, SHIFT_FROM_EXPERIMENT)
ShiftDefault = Callable[[], tuple[float, str]]  # -> (shift, source); may raise (a checkpoint llm-dit refuses)


def _builtin_shift() -> tuple[float, str]:
    return DEFAULT_SHIFT, SHIFT_FROM_DEFAULT


def _with_shift(params: dict[str, Any], level: int | None, shift_default: ShiftDefault) -> dict[str, Any]:
    """``params`` with the shift resolved (the default when no level set one) and ``shift_source``."""
    if params["sigmas"] is not None:
        return {**params, "shift_source": None}
    if params["shift"] is not None and level is not None:
        return {**params, "shift_source": SHIFT_LEVELS[min(level, len(SHIFT_LEVELS) - 1)]}
    shift, source = shift_default()
    return {**params, "shift": shift, "shift_source": source}


def _shift_level(levels: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the last level that sets a shift, or None."""
    found = None
    for i, level in enumerate(levels):
        if level.get("shift") is not None:
            found = i
    return found


def default_params(shift_default: ShiftDefault | None = None) -> dict[str, Any]:
    """The built-in defaults (the official recipe) resolved as a plan stores a run's params, without the seed.

    JSON-normalised (string keys), so it compares directly with params read back from the results store; the
    runner stores it with the plan (``PlanDefaults``), and the metrics find each axis's default value (the
    natural reference of a sweep) in what was stored, not in this function. ``shift_default``: the
    checkpoint's shift, as given to :func:`plan` (default: the built-in one); a checkpoint whose shift llm-dit
    refuses has no default shift (None).
    """

    def shift_or_none() -> tuple[Any, Any]:
        try:
            return (shift_default or _builtin_shift)()
        except LlmDitError:
            return None, None

    params = _with_shift(_resolve(_merge([_settings_layer(Settings())]), seed=0), None, shift_or_none)
    params.pop("seed")
    params.pop("shift_source")
    return json.loads(json.dumps(jsonable(params)))


def _check_overrides(overrides: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """Validate CLI/API overrides once; ``where`` names the first run they apply to (they apply to all)."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    for key, value in (overrides or {}).items():
        if value is None:  # an unset CLI option
            continue
        if key not in SETTABLE_PARAMETERS:
            flat = key.rpartition(".")[2]
            if key == "seed":
                errors.append("override 'seed': pass the seeds to plan (the experiment's seeds are its default)")
            elif flat != key and flat in SETTABLE_PARAMETERS:
                errors.append(f"override '{key}': use the flat name '{flat}'")
            else:
                errors.append(f"override {unknown_parameter(key)}")
            continue
        try:
            _check_value(key, value)
        except ConfigError as exc:
            errors.append(f"{where}: override {key}={value_label(value)}: {exc}")
            continue
        out[key] = value
    if errors:
        raise ConfigError("\n".join(errors))
    return out


# Parameters an axis value makes irrelevant below it, besides the one it sets (see _merge). shift_source goes
# with the shift: an axis that sets shift or sigmas decides it too (the metrics then do not hold it fixed).
_MERGE_REPLACES: dict[str, tuple[str, ...]] = {
    "hidden_layer": ("layer_weights",),
    "layer_weights": ("hidden_layer",),
    "sigmas": ("steps", "shift", "shift_source"),
    "steps": ("sigmas",),
    "shift": ("sigmas", "shift_source"),
    "vl_alpha": ("vl_alpha_schedule",),
    "vl_alpha_schedule": ("vl_alpha",),
}
# What an axis that sets a parameter decides besides it (stored with the plan: the metrics do not hold these fixed
# when they pair a run with its reference): the above, every other conditioning parameter for the source (a text
# run has them all None, a VL run its resolved values) and the values the planner derives from the source and the
# input images (_with_inputs), so that a VL run pairs with the pure Qwen3-4B run of an axis.
REPLACES: dict[str, tuple[str, ...]] = {
    **_MERGE_REPLACES,
    "conditioning": (
        *(name for name in CONDITIONING_PARAMETERS if name != "conditioning"),
        "input_sha256",
        "source_model",
        "source_numerics",
    ),
    **{name: ("input_sha256",) for name in IMAGE_SETTINGS},
}

# Parameters added after run ids were first issued, with the values that make the images of before: at those
# values they stay out of the id, so results made before them keep their ids (and resume).
_ID_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "cfg_normalization": (None, DEFAULT_CFG_NORMALIZATION),
    "cfg_truncation": (None, DEFAULT_CFG_TRUNCATION),
    # The conditioning parameters came with the second wave: a text run (all of them inert) keeps its old id.
    **{name: (None, ConditioningSettings.model_fields[name].default) for name in CONDITIONING_PARAMETERS},
    "init_image": (None,),
    "strength": (None,),
    "input_sha256": (None,),
    "source_model": (None,),
    "source_numerics": (None,),
}


def swept_overrides(experiment: Experiment, overrides: Mapping[str, Any] | None) -> list[str]:
    """Names of the given overrides that an axis overrides in turn (so they are ignored on its runs).

    Includes parameters an axis replaces (an override of ``layer_weights`` when an axis sets
    ``hidden_layer``, of ``steps`` when an axis sets ``sigmas``, ...). ``None`` values are not overrides.
    """
    touched: set[str] = set()
    for axis in experiment.axes:
        for param in axis.parameters():
            touched.add(param)
            # Only what a value really replaces: an axis that sets conditioning leaves an override of vl_layer alone.
            touched.update(_MERGE_REPLACES.get(param, ()))
    return [k for k, v in (overrides or {}).items() if v is not None and k in touched]


def compute_run_id(
    prompt_text: str,
    seed: int,
    params: Mapping[str, Any],
    model_fingerprint: str,
    numerics: Mapping[str, str] | None = None,
) -> str:
    """First 16 hex of sha256 over the canonical JSON of everything that affects pixels.

    The payload is ``{"model": fingerprint, "numerics": {...}, "params": {...}, "prompt": text, "seed": n}``
    dumped with ``sort_keys=True, separators=(",", ":")`` (ASCII escapes), where ``params`` are the
    resolved params without ``seed`` (already at the top), ``output_dir`` and ``token_manipulation`` (its
    whole effect is the prompt text, so a no-op manipulation gives the id of the plain run), and with
    ``layer_weights`` keys as strings; image paths (``vl_image``, ``style_image``, ``neutral_image``) are left out and
    their bytes' sha256 (``input_sha256``) hashed instead, with the source's weights (``source_model``).
    Experiment name, prompt id, labels and package versions are left out
    on purpose: the same image in two experiments gets the same id (a store can reuse it), and upgrading a
    package does not invalidate resume; what can change pixels across machines goes in ``numerics``. The
    shift is hashed as resolved (the checkpoint's when no level sets one), ``shift_source`` is not (the same
    shift from two places makes the same image), and ``cfg_normalization`` / ``cfg_truncation`` only away
    from their neutral values (off, or inert without CFG), so ids issued before they existed still hold.
    """
    pixel = {
        k: v
        for k, v in params.items()
        if k not in ("seed", "output_dir", "shift_source", TOKEN_MANIPULATION, *IMAGE_PARAMETERS)
        and v not in _ID_NEUTRAL.get(k, ())
    }
    payload = {
        "model": model_fingerprint,
        "numerics": {str(k): str(v) for k, v in (numerics or {}).items()},
        "params": jsonable(pixel),
        "prompt": prompt_text,
        "seed": seed,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# Image-valued parameters: the planner makes their paths absolute and hashes their bytes into ``input_sha256``; the
# run id hashes the bytes, not the path.
IMAGE_PARAMETERS = IMAGE_SETTINGS


def _with_inputs(
    params: dict[str, Any], settings: Settings, digests: dict[str, tuple[str, str]], models: dict[str, str]
) -> dict[str, Any]:
    """``params`` with image paths made absolute, their sha256 in ``input_sha256``, the source's weights in
    ``source_model`` and its device/dtype in ``source_numerics`` (all None for a text run). ``digests`` caches
    path -> (absolute, sha256) and ``models`` source -> fingerprint across runs."""
    from llm_dit.files import input_image
    from llm_dit.models.devices import numerics_label
    from llm_dit.models.sources import source_fingerprint

    source = params.get("conditioning")
    out = dict(params)
    hashes: dict[str, Any] = {}
    for name in IMAGE_PARAMETERS:
        value = params.get(name)
        if value is None:
            continue
        paths = value if isinstance(value, list) else [value]
        for path in paths:
            if path not in digests:
                full, sha = input_image(path, name)
                digests[path] = (str(full), sha)
        resolved = [digests[p] for p in paths]
        out[name] = [full for full, _ in resolved] if isinstance(value, list) else resolved[0][0]
        hashes[name] = [sha for _, sha in resolved] if isinstance(value, list) else resolved[0][1]
    out["input_sha256"] = hashes or None
    if source in (None, "text"):  # only an init image (image-to-image) may be an input
        return {**out, "source_model": None, "source_numerics": None}
    section = getattr(settings, source)
    if source not in models:  # once per plan: a fingerprint reads up to 2 MiB of each weights file
        models[source] = source_fingerprint(source, section.model_path, settings.model_path)
    out["source_model"] = models[source]
    # The source encoder's device and dtype change its features, so the pixels (as the text encoder's do).
    out["source_numerics"] = numerics_label(section.device, section.torch_dtype, f"{source}.device")
    return out


# A baseline's conditioning is the built-in default plus its own: the profile's, [base]'s and the overrides' would set
# the grid's source settings on it (and a VL setting on a text run is refused as inert).
DEFAULT_CONDITIONING: dict[str, Any] = {
    k: ConditioningSettings.model_fields[k].default for k in CONDITIONING_PARAMETERS
}


def _baseline_levels(
    settings_layer: Mapping[str, Any], base: Mapping[str, Any], overrides: Mapping[str, Any], own: Mapping[str, Any]
) -> list[Mapping[str, Any]]:
    """The parameter levels of a baseline run: those of every run (same encoder and generation settings, so the
    same size, steps and shift), with the conditioning of the profile, ``[base]`` and the overrides left out."""

    def without(level: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in level.items() if k not in CONDITIONING_PARAMETERS}

    return [{**settings_layer, **DEFAULT_CONDITIONING}, without(base), without(overrides), own]


def baseline_overrides(experiment: Experiment, overrides: Mapping[str, Any] | None) -> list[str]:
    """Names of the given overrides that a baseline does not take (conditioning parameters, see
    :func:`_baseline_levels`, and those it sets itself, e.g. a converged reference's steps), so the CLI can say so."""
    if experiment.baseline is None:
        return []
    own = experiment.baseline.params
    return [k for k, v in (overrides or {}).items() if v is not None and (k in CONDITIONING_PARAMETERS or k in own)]


def _run_name(experiment: Experiment, prompt_id: str, seed: int, variables: Mapping[str, str]) -> str:
    parts = " ".join(f"{k}={v}" for k, v in variables.items())
    return f"{experiment.name} run {prompt_id} seed {seed}" + (f" {parts}" if parts else "")


def image_name(prompt_id: str, variables: Mapping[str, str], seed: int, run_id: str) -> str:
    """``<prompt_id>__<var>=<label>__...__seed<seed>__<run_id[:8]>.png`` with safe, bounded labels."""
    fields = [file_label(prompt_id)]
    fields += [f"{name}={file_label(label)}" for name, label in variables.items()]
    fields += [f"seed{seed}", run_id[:8]]
    return "__".join(fields) + ".png"


def plan(
    experiment: Experiment,
    prompts: Sequence[Prompt],
    seeds: Sequence[int],
    settings: Settings,
    *,
    overrides: Mapping[str, Any] | None = None,
    model_fingerprint: str,
    numerics: Mapping[str, str] | None = None,
    shift_default: ShiftDefault | None = None,
) -> list[PlannedRun]:
    """Expand an experiment into validated runs: prompts (given order) x combinations x seeds.

    Precedence: defaults < ``settings`` < experiment base < ``overrides`` (flat names; ``None`` = unset)
    < axis values. The plan's size (prompts x combinations x seeds) is counted first and refused above
    ``settings.limits.max_runs``. ``shift_default`` gives the shift (and its source) of runs no level gives one: the
    checkpoint's scheduler shift (default: the built-in one); it is called only if a run needs it. Every run is
    validated with the config schema and ``settings.limits``; the first invalid one raises
    LlmDitError naming the experiment, prompt, seed and variables. Run ids are unique within a plan: a run
    that would make the same image as an earlier one (e.g. a token manipulation that leaves a prompt
    unchanged) gets an id derived from the earlier id and its own variables.
    """
    if not model_fingerprint or not isinstance(model_fingerprint, str):
        raise LlmDitError("plan needs a model_fingerprint (a non-empty string identifying the weights)")
    if not prompts:
        raise LlmDitError(f"{experiment.name}: no prompts to plan")
    prompt_ids = [p.id for p in prompts]
    dupes = sorted({pid for pid in prompt_ids if prompt_ids.count(pid) > 1})
    if dupes:
        raise LlmDitError(f"{experiment.name}: prompt ids given more than once: {', '.join(dupes)}")
    seed_list = list(seeds)
    if not seed_list:
        raise LlmDitError(f"{experiment.name}: no seeds to plan")
    for seed in seed_list:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise LlmDitError(f"{experiment.name}: seed {seed!r} must be an integer in 0..{MAX_SEED}")
    if len(set(seed_list)) != len(seed_list):
        twice = sorted(seed for seed, n in Counter(seed_list).items() if n > 1)
        raise LlmDitError(f"{experiment.name}: seeds given more than once: {', '.join(map(str, twice[:10]))}")
    # Counted before anything is expanded: a plan of 10^10 runs is refused in milliseconds, not built.
    total = len(prompts) * experiment.combination_count() * len(seed_list)
    if total > settings.limits.max_runs:
        raise LlmDitError(
            f"{experiment.name}: {total} runs = {len(prompts)} prompts x {experiment.combination_count()} "
            f"combinations x {len(seed_list)} seeds, above the limit of {settings.limits.max_runs} runs "
            f"(limits.max_runs); if you mean it, raise it in the config file: [default.limits] max_runs = {total}"
        )
    experiment = experiment.with_images()  # its placeholders replaced by its images (already done: itself)
    override_layer = _check_overrides(
        overrides, _run_name(experiment, prompts[0].id, seed_list[0], {}) + " (and every other run)"
    )
    settings_layer = _settings_layer(settings)
    combos = experiment.combinations()
    levels = [
        _baseline_levels(settings_layer, experiment.base, override_layer, combo[0].params)
        if experiment.is_baseline(combo)
        else [settings_layer, experiment.base, override_layer, *(v.params for v in combo)]
        for combo in combos
    ]
    merged = [_merge(combo_levels) for combo_levels in levels]
    shift_of = functools.cache(shift_default or _builtin_shift)
    resolved: dict[int, dict[str, Any]] = {}  # per combination: params without the seed's value
    runs: list[PlannedRun] = []
    names: dict[str, str] = {}
    ids: set[str] = set()
    digests: dict[str, tuple[str, str]] = {}
    models: dict[str, str] = {}
    for prompt in prompts:
        for c, combo in enumerate(combos):
            variables = {axis.name: value.label for axis, value in zip(experiment.axes, combo, strict=True)}
            for seed in seed_list:
                where = _run_name(experiment, prompt.id, seed, variables)
                if c not in resolved:
                    try:
                        resolved[c] = _with_shift(_resolve(merged[c], seed), _shift_level(levels[c]), shift_of)
                        resolved[c] = _with_inputs(resolved[c], settings, digests, models)
                        check_limits(settings.limits, resolved[c])
                    except LlmDitError as exc:
                        raise LlmDitError(f"{where}: {exc}") from None
                params = {**resolved[c], "seed": seed}
                manipulation = params[TOKEN_MANIPULATION]
                text = prompt.text
                if manipulation is not None:
                    from llm_dit.experiments.prompts import manipulate

                    try:
                        text = manipulate(prompt, manipulation, seed)
                    except (LlmDitError, ValueError) as exc:
                        raise LlmDitError(f"{where}: token_manipulation {manipulation}: {exc}") from None
                rid = compute_run_id(text, seed, params, model_fingerprint, numerics)
                if rid in ids:
                    # Same pixels as an earlier run of this plan (e.g. a token manipulation that leaves this
                    # prompt unchanged). Every planned condition keeps its own row and image, so the id is
                    # derived from the first one and this run's variables: still deterministic, still unique.
                    tag = json.dumps(variables, sort_keys=True, separators=(",", ":"))
                    rid = hashlib.sha256(f"{rid}:{tag}".encode()).hexdigest()[:16]
                ids.add(rid)
                name = image_name(prompt.id, variables, seed, rid)
                if name in names:
                    raise LlmDitError(f"{where}: image name {name} is also that of {names[name]}; rename a prompt id")
                names[name] = where
                runs.append(PlannedRun(rid, experiment.name, prompt, text, seed, variables, params, name))
    return runs

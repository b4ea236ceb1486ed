"""The TOML config file and its profiles: the file checker, ``load_settings``, ``list_profiles``, ``render_settings``.

Layering (highest wins): overrides (CLI / API) > named profile > ``[default]`` profile > built-in. Every value in a
file is validated with its file, line, section and key; an unknown key or section is an error with a suggested fix
(legacy keys of earlier tools included), never silently ignored. Builds on :mod:`llm_dit.config.schema`; it must
not import torch, any model library or another llm_dit layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llm_dit.config.schema import (
    SECTIONS,
    SETTING_KEYS,
    TOP_LEVEL_KEYS,
    Layer,
    Origin,
    Settings,
    nest_keys,
    override_layer,
    resolve_layers,
    toml_value,
    validation_messages,
)
from llm_dit.config.toml_lines import TomlLines, parse_toml
from llm_dit.errors import ConfigError, closest

DEFAULT_PROFILE = "default"

# Keys from the seed project's configs (and common diffusers names) with a pointer to the real key.
_THINK_HINT = (
    'use think_block = "none" | "empty" | "<text>" in [{profile}.encoder] '
    "(note: enable_thinking=true in Qwen3's template means NO think block)"
)
_LEGACY_KEYS: dict[str, str] = {
    "enable_thinking": _THINK_HINT,
    "force_think_block": _THINK_HINT,
    "thinking_content": _THINK_HINT,
    "num_inference_steps": "use steps in [{profile}.generation]",
    "max_sequence_length": "use max_text_tokens in [{profile}.encoder] (512 = diffusers' cap)",
    "hidden_layers": "use hidden_layer (one layer) or layer_weights (a blend) in [{profile}.encoder]",
    "cfg_scale": "use guidance_scale in [{profile}.generation]",
    "dtype": "use torch_dtype in [{profile}.encoder] or [{profile}.pipeline]",
    "output_dir": "output_dir was removed from the config (only generate read it): give generate -o FILE or "
    "--output-dir DIR, and the experiment commands --output-dir (their results directory)",
    "image_reward_path": "ImageReward is not supported: the image-reward package does not run with transformers 5 "
    "(see docs/metrics.md); use siglip_path or clip_path in [{profile}.metrics]",
}


def _key_home(key: str) -> list[str]:
    """The sections in which a bare key is valid ("" for the profile's top level)."""
    homes = [sec for sec, model in SECTIONS.items() if key in model.model_fields]
    if key in TOP_LEVEL_KEYS:
        homes.insert(0, "")
    return homes


def _sect(profile: str, sec: str) -> str:
    return f"[{profile}.{sec}]" if sec else f"[{profile}]"


# --------------------------------------------------------------------------------------------------
# The config file
# --------------------------------------------------------------------------------------------------


class _ConfigFile:
    """A parsed config file with line lookup, validated structure and per-profile layers."""

    def __init__(self, path: Path, label: str) -> None:
        self.label = label
        if not path.exists():
            raise ConfigError(
                f"config file '{label}' not found (looked at {path.resolve()}); "
                "pass an existing file, or start from config.toml.example"
            )
        if not path.is_file():
            raise ConfigError(f"config file '{label}' is not a file")
        try:
            self.text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{label}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{label}: cannot read ({exc.strerror})") from None
        self.data = parse_toml(self.text, label)
        self.lines = TomlLines(self.text)

    def where(self, *path: str) -> str:
        """'file:line' for a table/key path, falling back to its nearest enclosing table."""
        return self.lines.where(self.label, *path)

    @property
    def profiles(self) -> list[str]:
        return list(self.data)

    def check(self) -> None:
        """Check the structure and values of every profile; raise one ConfigError listing all problems."""
        errors: list[tuple[int, str]] = []
        for profile, table in self.data.items():
            if profile in SECTIONS:
                errors.append(
                    (
                        self.lines.line_of(profile),
                        f"{self.where(profile)}: section [{profile}] must be inside a profile; "
                        f"use [{DEFAULT_PROFILE}.{profile}]",
                    )
                )
                continue
            if profile in TOP_LEVEL_KEYS or not isinstance(table, dict):
                errors.append(
                    (
                        self.lines.line_of(profile),
                        f"{self.where(profile)}: '{profile}' is outside any profile; every setting must be "
                        f"under a profile table such as [{DEFAULT_PROFILE}]",
                    )
                )
                continue
            # Values of the known keys are checked too, so one run reports every problem.
            errors += self._check_profile(profile, table)
            errors += self._check_values(profile, table)
        if errors:
            errors.sort(key=lambda e: e[0])
            raise ConfigError("\n".join(msg for _, msg in errors))

    def _unknown_key(self, profile: str, sec: str, key: str, valid: list[str]) -> str:
        where = self.where(profile, *([sec] if sec else []), key)
        head = f"{where}: unknown key '{key}' in {_sect(profile, sec)}; "
        if key in _LEGACY_KEYS:
            return head + _LEGACY_KEYS[key].format(profile=profile)
        homes = [h for h in _key_home(key) if h != sec]
        if homes:
            return head + f"'{key}' belongs in " + " or ".join(_sect(profile, h) for h in homes)
        hint = closest(key, valid)
        if hint:
            return head + f"did you mean '{hint}'?"
        everywhere = closest(key, [k.rpartition(".")[2] for k in SETTING_KEYS])
        if everywhere:
            homes = " or ".join(_sect(profile, h) for h in _key_home(everywhere))
            return head + f"did you mean '{everywhere}' in {homes}?"
        return head + f"valid keys: {', '.join(valid)}"

    def _check_profile(self, profile: str, table: dict[str, Any]) -> list[tuple[int, str]]:
        errors: list[tuple[int, str]] = []
        top_valid = list(TOP_LEVEL_KEYS) + list(SECTIONS)
        for key, value in table.items():
            line = self.lines.line_of(profile, key)
            if key in SECTIONS:
                if not isinstance(value, dict):
                    errors.append((line, f"{self.where(profile, key)}: '{key}' must be a table: [{profile}.{key}]"))
                    continue
                valid = list(SECTIONS[key].model_fields)
                for sub in value:
                    if sub not in valid:
                        sub_line = self.lines.line_of(profile, key, sub)
                        errors.append((sub_line, self._unknown_key(profile, key, sub, valid)))
            elif key in TOP_LEVEL_KEYS:
                continue
            elif isinstance(value, dict):
                # An unknown sub-table such as [default.pytorch]: name the nearest section, and
                # where each of its keys belongs, in one line.
                hint = closest(key, list(SECTIONS))
                fix = (
                    f"did you mean [{profile}.{hint}]?"
                    if hint
                    else "valid sections: " + ", ".join(f"[{profile}.{s}]" for s in SECTIONS)
                )
                moves = []
                for sub in value:
                    homes = _key_home(sub)
                    if sub in _LEGACY_KEYS:
                        moves.append(f"for '{sub}' {_LEGACY_KEYS[sub].format(profile=profile)}")
                    elif homes:
                        moves.append(f"'{sub}' belongs in " + " or ".join(_sect(profile, h) for h in homes))
                errors.append(
                    (
                        line,
                        f"{self.where(profile, key)}: unknown section [{profile}.{key}]; {fix}"
                        + "".join(f"; {m}" for m in moves),
                    )
                )
            else:
                errors.append((line, self._unknown_key(profile, "", key, top_valid)))
        return errors

    def _flat(self, table: dict[str, Any]) -> dict[str, Any]:
        """The profile's known keys as dotted names (unknown ones are reported by _check_profile)."""
        flat = {k: table[k] for k in TOP_LEVEL_KEYS if k in table}
        for sec, model in SECTIONS.items():
            section = table.get(sec)
            if not isinstance(section, dict):
                continue
            for name, value in section.items():
                if name in model.model_fields:
                    flat[f"{sec}.{name}"] = value
        return flat

    def _origin(self, profile: str, key: str) -> Origin:
        sec, _, name = key.rpartition(".")
        path = (profile, sec, name) if sec else (profile, name)

        def describe(value: Any) -> str:
            return f"{self.where(*path)}: {_sect(profile, sec)} {name} = {toml_value(value)}"

        return Origin(describe)

    def _check_values(self, profile: str, table: dict[str, Any]) -> list[tuple[int, str]]:
        flat = self._flat(table)
        try:
            Settings.model_validate(nest_keys(flat))
        except ValidationError as exc:
            out = []
            for key, message in validation_messages(exc):
                sec, _, name = key.rpartition(".")
                path = (profile, sec, name) if sec else (profile, name)
                where = self._origin(profile, key).describe(flat.get(key))
                out.append((self.lines.line_of(*path), f"{where}: {message}"))
            return out
        return []

    def layer(self, profile: str) -> Layer:
        flat = self._flat(self.data.get(profile, {}))
        return Layer(f"{self.label}:[{profile}]", flat, {key: self._origin(profile, key) for key in flat})


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedSettings:
    """Validated settings plus where each value came from.

    ``sources`` maps every dotted key to "default", "<file>:[profile]" or "override".
    ``notes`` lists settings that are valid but have no effect in this combination.
    """

    settings: Settings
    sources: dict[str, str]
    config_path: Path | None
    profile: str
    notes: tuple[str, ...] = field(default=())


def list_profiles(config_path: str | Path) -> list[str]:
    """The profile names in a config file (validated)."""
    cfg = _ConfigFile(Path(config_path), str(config_path))
    cfg.check()
    return cfg.profiles


def _notes(settings: Settings, sources: Mapping[str, str]) -> tuple[str, ...]:
    """Valid-but-inert combinations, so a value that does nothing is never silently accepted."""
    notes = []
    gen, enc = settings.generation, settings.encoder
    if gen.sigmas is not None and sources["generation.shift"] != "default":
        notes.append(f"shift {gen.shift} is not applied: explicit sigmas are used verbatim")
    if gen.negative_prompt and gen.guidance_scale == 0:
        notes.append("negative_prompt has no effect: guidance_scale is 0 (CFG off)")
    for key in ("cfg_normalization", "cfg_truncation"):
        if gen.guidance_scale == 0 and sources[f"generation.{key}"] != "default":
            notes.append(f"{key} has no effect: guidance_scale is 0 (CFG off)")
    if enc.layer_weights is not None and sources["encoder.hidden_layer"] != "default":
        notes.append(f"hidden_layer {enc.hidden_layer} is not used: layer_weights replaces it")
    return tuple(notes)


def load_settings(
    config_path: str | Path | None = None,
    profile: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    set_overrides: Mapping[str, Any] | None = None,
) -> ResolvedSettings:
    """Resolve settings: overrides > named profile > ``[default]`` > built-in defaults.

    ``overrides`` are keyed by dotted name ("generation.steps", "model_path"); ``None`` values are
    ignored (an unset CLI option). ``set_overrides`` are overrides given as ``--set NAME=VALUE`` (same dotted
    keys; errors name them so); a key in both is an error naming both. The whole file is validated, every
    profile, so a typo anywhere is reported. Raises ConfigError with one line per problem.
    """
    name = profile or DEFAULT_PROFILE
    layers: list[Layer] = []
    path: Path | None = None
    if config_path is not None:
        path = Path(config_path)
        cfg = _ConfigFile(path, str(config_path))
        cfg.check()
        if name not in cfg.data and name != DEFAULT_PROFILE:
            hint = closest(name, cfg.profiles)
            extra = f"did you mean '{hint}'? " if hint else ""
            raise ConfigError(
                f"profile '{name}' not found in {cfg.label}; {extra}profiles in the file: "
                + (", ".join(cfg.profiles) or "(none)")
            )
        if DEFAULT_PROFILE in cfg.data:
            layers.append(cfg.layer(DEFAULT_PROFILE))
        if name != DEFAULT_PROFILE:
            layers.append(cfg.layer(name))
    elif name != DEFAULT_PROFILE:
        raise ConfigError(f"profile '{name}' given but no config file; pass --config FILE")
    flags = override_layer(overrides)
    sets = override_layer(set_overrides, set_flag=True)
    both = [key for key in sets.values if key in flags.values]
    if both:
        raise ConfigError(
            "; ".join(
                f"{flags.origins[k].describe(flags.values[k])} and {sets.origins[k].describe(sets.values[k])} both "
                f"set {k}: give it once"
                for k in both
            )
        )
    layers += [flags, sets]
    settings, sources = resolve_layers(layers)
    return ResolvedSettings(settings, sources, path, name, _notes(settings, sources))


def render_settings(resolved: ResolvedSettings) -> str:
    """The effective settings as TOML (a ``[default]`` layout), each value commented with its source.

    Unset optional values are written as comments, so the text parses back to the same settings.
    """
    s = resolved.settings
    origin = f" of {resolved.config_path}" if resolved.config_path else ""
    out = [
        f'# llm-dit resolved settings: profile "{resolved.profile}"{origin}',
        "# After each value, its source: default = built-in, FILE:[profile] = config file,",
        "# override = CLI/API. Unset optional values are shown as comments.",
        "",
    ]

    def emit(key: str, value: Any, unset_note: str = "") -> None:
        name = key.rpartition(".")[2]
        src = resolved.sources.get(key, "default")
        if value is None:
            out.append(f"# {name} is unset ({unset_note})  # {src}")
        else:
            out.append(f"{name} = {toml_value(value)}  # {src}")

    unset = {
        "model_path": "built-in tiny model",
        "encoder.layer_weights": "hidden_layer alone",
        "encoder.system_prompt": "no system prompt",
        "pipeline.vae_device": "same as device",
        "pipeline.vae_dtype": "same as torch_dtype",
        "generation.shift": "the checkpoint's scheduler_config.json shift",
        "generation.sigmas": "schedule from steps and shift",
        "metrics.siglip_path": "metric 'siglip' unavailable",
        "metrics.clip_path": "metric 'clip_score' unavailable",
        "metrics.pickscore_path": "metric 'pickscore' unavailable",
        "metrics.hpsv2_path": "metric 'hpsv2' unavailable",
        "metrics.lpips_backbone": "metrics 'lpips', 'diversity_lpips' unavailable",
        "metrics.inception_weights": "set-level metrics 'fid', 'kid' unavailable",
        "conditioning.vl_text": "the run's prompt",
        "conditioning.vl_alpha": "1 with a source",
        "conditioning.vl_target_std": "Qwen3-4B's std at the same layer",
        "conditioning.neutral_image": "mid-gray",
        "conditioning.embedding_instruction": "the default task",
        "vl.model_path": "the built-in tiny Qwen3-VL",
        "embedding.model_path": "the built-in tiny Qwen3-Embedding",
    }
    out.append(f"[{DEFAULT_PROFILE}]")
    emit("model_path", s.model_path, unset["model_path"])
    for sec in SECTIONS:
        out += ["", f"[{DEFAULT_PROFILE}.{sec}]"]
        for name, value in getattr(s, sec):
            key = f"{sec}.{name}"
            if isinstance(value, dict):
                value = {str(k): v for k, v in value.items()}
            emit(key, value, unset.get(key, ""))
    return "\n".join(out) + "\n"

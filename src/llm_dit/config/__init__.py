"""The one schema, validator and loader of every user-settable parameter (re-exports only).

The library API, the CLI and TOML files all go through this package, so a default can never differ between them
(an earlier tool had three different think-block defaults and a shift silently replaced by 1.15). Importers write
``from llm_dit.config import X``: :mod:`~llm_dit.config.schema` holds the settings models, keys and value parsers,
:mod:`~llm_dit.config.loader` the config file and its profiles, :mod:`~llm_dit.config.toml_lines` the TOML line
locator. Nothing here may import torch or any model library: the CLI validates a whole run before anything heavy
loads.
"""

from llm_dit.config.loader import DEFAULT_PROFILE, ResolvedSettings, list_profiles, load_settings, render_settings
from llm_dit.config.schema import (
    CLI_FLAGS,
    SETTING_KEYS,
    ConditioningSettings,
    EncoderSettings,
    GenerationSettings,
    LimitsSettings,
    MetricsSettings,
    PipelineSettings,
    Settings,
    SourceModelSettings,
    build_section,
    check_limits,
    conditioning_params,
    conditioning_problem,
    count_steps,
    generation_problem,
    parse_layer_weights,
    parse_scalar,
    parse_sigmas,
    split_assignment,
    toml_value,
)
from llm_dit.config.toml_lines import TomlLines, TomlPath, parse_toml

__all__ = [
    "CLI_FLAGS",
    "DEFAULT_PROFILE",
    "SETTING_KEYS",
    "ConditioningSettings",
    "EncoderSettings",
    "GenerationSettings",
    "LimitsSettings",
    "MetricsSettings",
    "PipelineSettings",
    "ResolvedSettings",
    "Settings",
    "SourceModelSettings",
    "TomlLines",
    "TomlPath",
    "build_section",
    "check_limits",
    "conditioning_params",
    "conditioning_problem",
    "count_steps",
    "generation_problem",
    "list_profiles",
    "load_settings",
    "parse_layer_weights",
    "parse_scalar",
    "parse_sigmas",
    "parse_toml",
    "render_settings",
    "split_assignment",
    "toml_value",
]

"""User-facing errors: one clear line that names the problem and the fix."""


class LlmDitError(Exception):
    """Bad input or environment. The CLI prints the message alone (no traceback) and exits non-zero."""


class ConfigError(LlmDitError):
    """A TOML config file or a parameter value is invalid."""


class CheckpointError(LlmDitError):
    """A checkpoint directory is missing, incomplete or unsupported."""

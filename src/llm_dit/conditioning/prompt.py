"""Prompt formatting: the Qwen3 chat format Z-Image's text encoder reads.

The official path (diffusers, DiffSynth and Tongyi agree) is one user turn plus the generation prompt, no
system prompt and NO think block:  ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``.
Qwen3's template produces that with ``enable_thinking=True``; ``enable_thinking=False`` appends an empty
think block (the flag name reads backwards). Here the think block is named for what it renders.
"""

from __future__ import annotations

from dataclasses import dataclass

from llm_dit.constants import DEFAULT_THINK_BLOCK, THINK_EMPTY, THINK_NONE
from llm_dit.errors import LlmDitError


@dataclass(frozen=True)
class FormattedPrompt:
    """A prompt in chat format, split so the content's tokens can be found (and compressed) later."""

    prefix: str  # system turn (if any) + "<|im_start|>user\n"
    content: str  # the user's prompt, unaltered
    suffix: str  # "<|im_end|>\n<|im_start|>assistant\n" + think block (if any)

    @property
    def text(self) -> str:
        return self.prefix + self.content + self.suffix


def think_block_text(think_block: str | None) -> str:
    """Render a think-block setting: ``none``/None -> "", ``empty`` -> an empty block, other text -> that text.

    A think block with text renders as Qwen3's template renders an assistant turn's reasoning
    (``<think>\n{text}\n</think>\n\n``, surrounding newlines of the text stripped as the template does).
    """
    if think_block is None or think_block == THINK_NONE:
        return ""
    if think_block == THINK_EMPTY:
        return "<think>\n\n</think>\n\n"
    if not isinstance(think_block, str):
        raise LlmDitError(f"think_block must be 'none', 'empty' or text, not {think_block!r}")
    # Qwen3's template renders reasoning_content.strip("\n"): surrounding newlines never reach the model.
    return f"<think>\n{think_block.strip(chr(10))}\n</think>\n\n"


def format_prompt(
    prompt: str, system_prompt: str | None = None, think_block: str | None = DEFAULT_THINK_BLOCK
) -> FormattedPrompt:
    """Format one prompt; an empty or None system prompt means no system turn."""
    if not isinstance(prompt, str):
        raise LlmDitError(f"prompt must be a string, not {type(prompt).__name__}")
    prefix = f"<|im_start|>system\n{system_prompt}<|im_end|>\n" if system_prompt else ""
    prefix += "<|im_start|>user\n"
    suffix = "<|im_end|>\n<|im_start|>assistant\n" + think_block_text(think_block)
    return FormattedPrompt(prefix=prefix, content=prompt, suffix=suffix)

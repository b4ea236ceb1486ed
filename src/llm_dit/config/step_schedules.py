"""Conditioning that changes over the denoising steps: the grammar of ``vl_alpha_schedule`` and its per-step values.

A schedule is written ``CURVE:START:END``: ``linear``, ``ease_in`` (slow start) or ``ease_out`` (fast start) from
START at the first step to END at the last one; ``constant:A`` (A at every step); ``step:START:END@K`` (START for
step indices < K, then END) or ``step:START:END@sigma=S`` (START while the step's sigma >= S, then END). Seed 004's
"timestep-dependent alpha" is e.g. ``step:1.0:0.0@sigma=0.7``: the VL source sets structure while the noise is high,
the text the details after. Pure Python (no torch): validation runs before anything loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

SCHEDULE_CURVES: tuple[str, ...] = ("constant", "linear", "ease_in", "ease_out", "step")
_EXAMPLE = "e.g. linear:1.0:0.0, ease_out:1:0, constant:0.3, step:1:0@3 or step:1:0@sigma=0.7"
_STEP_AT = re.compile(r"^(?:(?P<step>\d+)|sigma=(?P<sigma>[^@]+))$")


@dataclass(frozen=True)
class AlphaSchedule:
    """A source share per step (see the module docstring); ``values`` gives them for a run's sigmas."""

    curve: str
    start: float
    end: float
    at_step: int | None = None
    at_sigma: float | None = None

    def text(self) -> str:
        """The canonical spelling (what run ids and records hold): two spellings of one schedule are one run."""
        if self.curve == "constant":
            return f"constant:{self.start!r}"
        body = f"{self.curve}:{self.start!r}:{self.end!r}"
        if self.at_step is not None:
            return f"{body}@{self.at_step}"
        if self.at_sigma is not None:
            return f"{body}@sigma={self.at_sigma!r}"
        return body

    def values(self, sigmas: Sequence[float]) -> list[float]:
        """The alpha of each step, given the sigmas the steps start from (one per step, no final 0).

        Curves run over the step index: u = i / (steps - 1) (0 for one step). A constant schedule gives exactly
        START at every step (``start + (end - start) * u`` with end == start is start bit for bit), so it makes
        the image of the plain ``vl_alpha``.
        """
        steps = len(sigmas)
        out = []
        for i, sigma in enumerate(sigmas):
            if self.curve == "step":
                early = i < self.at_step if self.at_step is not None else float(sigma) >= float(self.at_sigma or 0.0)
                out.append(self.start if early else self.end)
                continue
            u = i / (steps - 1) if steps > 1 else 0.0
            shape = {"constant": 0.0, "linear": u, "ease_in": u * u, "ease_out": u * (2.0 - u)}[self.curve]
            out.append(self.start + (self.end - self.start) * shape)
        return out

    @property
    def lowest(self) -> float:
        return min(self.start, self.end)

    @property
    def mixes(self) -> bool:
        """Whether some step may mix text and source (an alpha strictly between 0 and 1): where a blend is read."""
        ends = (self.start, self.end)
        if self.curve == "step" or self.start == self.end:
            return any(0.0 < a < 1.0 for a in ends)
        return True


def _alpha(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"vl_alpha_schedule {what} {text!r} is not a number ({_EXAMPLE})") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"vl_alpha_schedule {what} must be in 0..1 (got {text})")
    return value


def parse_alpha_schedule(value: object) -> AlphaSchedule | None:
    """A ``vl_alpha_schedule`` value (a string, or an AlphaSchedule) checked; None/"" = no schedule. ValueError
    names the problem and the grammar."""
    if value is None or value == "":
        return None
    if isinstance(value, AlphaSchedule):
        return value
    if not isinstance(value, str):
        raise ValueError(f"vl_alpha_schedule must be a string like {_EXAMPLE}")
    body, _, at = value.strip().partition("@")
    parts = [p.strip() for p in body.split(":")]
    curve = parts[0]
    if curve not in SCHEDULE_CURVES:
        raise ValueError(f"vl_alpha_schedule curve {curve!r} is not one of {', '.join(SCHEDULE_CURVES)} ({_EXAMPLE})")
    if curve == "constant":
        if len(parts) != 2 or at:
            raise ValueError(f"vl_alpha_schedule constant takes one alpha, e.g. constant:0.3 (got {value!r})")
        alpha = _alpha(parts[1], "alpha")
        return AlphaSchedule("constant", alpha, alpha)
    if len(parts) != 3:
        raise ValueError(f"vl_alpha_schedule {value!r} needs CURVE:START:END ({_EXAMPLE})")
    start, end = _alpha(parts[1], "start"), _alpha(parts[2], "end")
    if curve != "step":
        if at:
            raise ValueError(f"vl_alpha_schedule {curve} takes no @: only step switches at a step or sigma")
        return AlphaSchedule(curve, start, end)
    match = _STEP_AT.match(at.strip())
    if match is None:
        raise ValueError(f"vl_alpha_schedule step needs @K (a step index) or @sigma=S, e.g. step:1:0@3 (got {value!r})")
    if match["step"] is not None:
        k = int(match["step"])
        if k < 1:
            raise ValueError("vl_alpha_schedule step@K needs K >= 1 (K = 0 would be END at every step)")
        return AlphaSchedule("step", start, end, at_step=k)
    try:
        sigma = float(match["sigma"])
    except ValueError:
        raise ValueError(f"vl_alpha_schedule step@sigma=S: S {match['sigma']!r} is not a number") from None
    if not (math.isfinite(sigma) and 0.0 < sigma <= 1.0):
        raise ValueError(f"vl_alpha_schedule step@sigma=S needs S in (0, 1] (got {match['sigma']})")
    return AlphaSchedule("step", start, end, at_sigma=sigma)

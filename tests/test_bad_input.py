"""Every bad input, for every command, in one table: refused in one line, before any work.

Each case runs the real CLI (``llm_dit.cli.main``) on arguments a user could type and asserts what issue 11 asks
of a refusal: exit status 2, nothing on stdout, exactly one stderr line ``error: ...`` naming the problem (its
needles) and not a fix that does not exist (its forbidden words), no traceback, the case's directory (results,
outputs, the working directory) byte-identical afterwards (``cli_helpers.results_snapshot``), and no model library
imported: torch, transformers and diffusers stay out of ``sys.modules``, so no model can have loaded.

The table holds the fail-fast cases of the command tests (the refusals of generate, ablate and plot live only
here; those of test_metrics_cli.py, test_compare_cli.py, test_viewer_api.py and test_embed_stats_cli.py are
repeated here with the stricter checks) and the inputs of section 2 of the issue: a locked
experiment (a real process holds the lock), damaged results databases under every reader and writer, damaged
weight files, unwritable and misnamed outputs, limits, huge plans, control characters, the CUDA message; and the
conditioning sources of issue 12 (their run parameters and input images, caption, reference-stats).

How the import check stays cheap: one child Python (``WORKER``) imports ``llm_dit.cli`` once and runs the cases
one after another, each with its own stdout/stderr buffers, working directory and environment, and reports per
case its exit status, its output and which model libraries are in ``sys.modules`` afterwards. A case that imported
one ends that child and the next case starts a fresh one, so every case is judged on its own imports. Anything
written to the child's file descriptors 1 and 2 directly (around ``sys.stdout``/``sys.stderr``) is collected per
case too and counts as output. Each answer has a deadline (a hang guard, not a timing test).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cli_helpers import ANSI, results_snapshot, run, subprocess_env
from llm_dit.experiments.store import DB_NAME
from llm_dit.generation.image import read_record

HEAVY = ("torch", "transformers", "diffusers")
# Seconds a child may take to start, and to answer one case. A refusal takes well under a second; these only stop
# a case that runs real work (the bug it tests for) from hanging the suite.
START_DEADLINE_S = 120.0
CASE_DEADLINE_S = 60.0

WORKER = r"""
import contextlib, io, json, os, sys, traceback

HEAVY = tuple(sys.argv[2].split(","))
protocol = os.fdopen(os.dup(1), "w", encoding="utf-8")
# Output that bypasses sys.stdout/sys.stderr (a library holding the original streams, C code) lands here.
stray = open(sys.argv[1], "w+b", buffering=0)
os.dup2(stray.fileno(), 1)
os.dup2(stray.fileno(), 2)

from llm_dit.cli import main


def answer(reply):
    protocol.write(json.dumps(reply) + "\n")
    protocol.flush()


answer({"heavy": [m for m in HEAVY if m in sys.modules]})
for line in sys.stdin:
    case = json.loads(line)
    os.chdir(case["cwd"])
    saved = dict(os.environ)
    os.environ.update(case["env"])
    out, err = io.StringIO(), io.StringIO()
    rc = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(case["argv"])
        except BaseException:
            traceback.print_exc()
    os.environ.clear()
    os.environ.update(saved)
    for stream in (sys.__stdout__, sys.__stderr__):
        stream.flush()
    stray.seek(0)
    leaked = stray.read().decode("utf-8", "replace")
    stray.seek(0)
    stray.truncate()
    heavy = [m for m in HEAVY if m in sys.modules]
    answer({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue(), "leaked": leaked, "heavy": heavy})
"""


class Worker:
    """The child that runs cases (see the module docstring); restarted after a case that imported a model library,
    died or ran past its deadline."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.proc: subprocess.Popen[str] | None = None
        self.started = 0

    def _read(self, deadline_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], deadline_s)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            why = "no answer within the deadline" if not ready else "the child died"
            self.stop()
            leaked = self.stray.read_text(errors="replace") if self.stray.exists() else ""
            return {"failure": f"{why} ({deadline_s:.0f} s); its own output: {leaked[-3000:]!r}"}
        return json.loads(line)

    def _start(self) -> None:
        self.started += 1
        self.stray = self.scratch / f"stray-{self.started}.txt"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.stray), ",".join(HEAVY)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, encoding="utf-8", cwd=self.scratch,
            env=subprocess_env(),
        )  # fmt: skip
        hello = self._read(START_DEADLINE_S)
        assert "failure" not in hello, hello["failure"]

    def run(self, argv: list[str], cwd: Path, env: dict[str, str]) -> dict[str, Any]:
        """One case: {rc, stdout, stderr, leaked, heavy}, or {failure} when the child did not answer."""
        if self.proc is None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "cwd": str(cwd), "env": env}) + "\n")
        self.proc.stdin.flush()
        reply = self._read(CASE_DEADLINE_S)
        if reply.get("heavy"):  # the next case gets a child with nothing imported
            self.stop()
        return reply

    def stop(self) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    child = Worker(tmp_path_factory.mktemp("worker"))
    yield child
    child.stop()


# ------------------------------------------------------------------------------------------ what a case works on


@dataclass
class Env:
    """The directories of one case. ``tmp`` is what must stay byte-identical: results, outputs, the working
    directory and the small input files; ``inputs`` holds large inputs (checkpoint copies) outside it."""

    tmp: Path
    inputs: Path
    checkpoint: Path
    request: pytest.FixtureRequest
    stack: ExitStack
    fields: dict[str, str] = field(default_factory=dict)

    @property
    def cwd(self) -> Path:
        return self.tmp / "cwd"

    @property
    def results(self) -> Path:
        return self.tmp / "results"

    def fill(self, text: str) -> str:
        """``text`` with {tmp}, {res}, {in}, {ck}, {cwd} and the setups' fields replaced."""
        names = {"tmp": self.tmp, "res": self.results, "in": self.inputs, "ck": self.checkpoint, "cwd": self.cwd}
        for key, value in {**{k: str(v) for k, v in names.items()}, **self.fields}.items():
            text = text.replace("{" + key + "}", value)
        return text


Setup = Callable[[Env], None]


def results_copy(env: Env) -> None:
    """A private copy of the session's tiny-model results ('look': shift x layer, with metrics; 'look_custom')."""
    source: Path = env.request.getfixturevalue("tiny_results")
    shutil.copytree(source, env.results, ignore=shutil.ignore_patterns("*.db-shm"))


def inception_config(env: Env) -> None:
    """{tmp}/inc.toml naming an Inception weights file that exists (the refusals come before it is read)."""
    (env.tmp / "w.pth").write_bytes(b"not read")
    (env.tmp / "inc.toml").write_text(f'[default.metrics]\ninception_weights = "{env.tmp / "w.pth"}"\n')


def _edit_db(env: Env, *statements: str) -> None:
    # A normal connection in the database's own (WAL) mode: closing it checkpoints and removes the WAL.
    conn = sqlite3.connect(env.results / DB_NAME, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def db_truncated(env: Env) -> None:
    """The first half of the database file, as an interrupted copy leaves it."""
    results_copy(env)
    _edit_db(env)  # no WAL left over, so the file alone is the database
    db = env.results / DB_NAME
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 2])


def db_garbage(env: Env) -> None:
    """Random bytes of the database's size under its name."""
    results_copy(env)
    _edit_db(env)
    db = env.results / DB_NAME
    db.write_bytes(random.Random(0).randbytes(db.stat().st_size))


def db_future(env: Env) -> None:
    """A database written by a newer llm-dit (schema version 99)."""
    results_copy(env)
    _edit_db(env, "UPDATE schema_version SET version = 99")


def db_missing_table(env: Env) -> None:
    """A database whose runs table is gone (the writers used to re-create it, empty, without a word)."""
    results_copy(env)
    _edit_db(env, "PRAGMA foreign_keys = OFF", "DROP INDEX runs_by_seq", "DROP TABLE runs")


DAMAGED_DBS: dict[str, Setup] = {
    "truncated": db_truncated,
    "garbage": db_garbage,
    "future-schema": db_future,
    "missing-table": db_missing_table,
}

CONFIG = "[default]\n[default.generation]\nseed = 5\n\n[fast.generation]\nsteps = 2\n"


def bad_files(env: Env) -> None:
    """The broken inputs of tests/test_cli.py's bad-input table, plus a config with a profile 'fast'."""
    (env.tmp / "a-file").write_text("a regular file\n")
    (env.tmp / "syntax.toml").write_text("[default]\n[default.generation\nsteps = 2\n")
    (env.tmp / "typo.toml").write_text("[default]\nmodel_path = 'tiny'\n\n[default.generation]\nstep = 4\n")
    (env.tmp / "value.toml").write_text("[default.generation]\nwidth = 1000\n")
    (env.tmp / "llm-dit.toml").write_text(CONFIG)
    (env.tmp / "exists.png").write_bytes(b"an image the user keeps")
    (env.tmp / "exists.safetensors").write_bytes(b"features the user keeps")
    (env.tmp / "exists.json").write_text("{}\n")
    (env.tmp / "a-dir").mkdir()


def _checkpoint_copy(env: Env) -> Path:
    """A copy of the tiny checkpoint in ``inputs`` (hard links: a damaged file is replaced, never edited)."""
    target = env.inputs / "ck"
    shutil.copytree(env.checkpoint, target, copy_function=os.link)
    return target


def incomplete_checkpoint(env: Env) -> None:
    (_checkpoint_copy(env) / "vae" / "config.json").unlink()


WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def weights_truncated(env: Env) -> None:
    path = _checkpoint_copy(env) / WEIGHTS
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def weights_garbage(env: Env) -> None:
    path = _checkpoint_copy(env) / WEIGHTS
    size = path.stat().st_size
    path.unlink()
    path.write_bytes(random.Random(1).randbytes(size))


MINI = (
    'name = "mini"\ndescription = "two shifts"\nseeds = [1, 2]\n\n[prompts]\nids = ["animal_001"]\n\n'
    '[[axes]]\nname = "shift"\nvalues = [2.0, 4.0]\n'
)


TOKEN_MODE_AXIS = (
    'name = "tokens"\ndescription = "a misspelt token mode"\nseeds = [1]\n\n[prompts]\nids = ["animal_001"]\n\n'
    '[base]\nconditioning = "vl"\nvl_image = "ref.png"\n\n'
    '[[axes]]\nname = "vl_token_mode"\nvalues = ["full", "imgonly"]\n'
)


TYPO_PLACEHOLDER = (
    'name = "typo"\nimages = ["ref.png"]\n\n[prompts]\nids = ["animal_001"]\n\n'
    '[base]\nconditioning = "vl"\nvl_image = "{imag}"\n\n[[axes]]\nname = "vl_alpha"\nvalues = [0.5]\n'
)
NO_IMAGES = TYPO_PLACEHOLDER.replace('"typo"', '"bare"').replace('images = ["ref.png"]\n', "")
NO_IMAGES = NO_IMAGES.replace("{imag}", "{image}")


def placeholder_experiments(env: Env) -> None:
    """typo.toml: a misspelt placeholder ({imag}); bare.toml: {image} with no images listed."""
    (env.tmp / "typo.toml").write_text(TYPO_PLACEHOLDER, encoding="utf-8")
    (env.tmp / "bare.toml").write_text(NO_IMAGES, encoding="utf-8")


def token_mode_experiment(env: Env) -> None:
    (env.tmp / "tokens.toml").write_text(TOKEN_MODE_AXIS, encoding="utf-8")


def mini_experiment(env: Env) -> None:
    (env.tmp / "mini.toml").write_text(MINI, encoding="utf-8")


def huge_experiment(env: Env) -> None:
    """200k seeds x 50k shift values of one prompt: 10^10 runs, to be refused by counting, not by expanding."""
    seeds = ", ".join(map(str, range(200_000)))
    values = ", ".join(f"{1 + i / 100_000:.5f}" for i in range(50_000))
    text = f'name = "huge"\ndescription = "too big"\nseeds = [{seeds}]\n\n[prompts]\nids = ["animal_001"]\n\n'
    text += f'[[axes]]\nname = "shift"\nvalues = [{values}]\n'
    (env.tmp / "huge.toml").write_text(text, encoding="utf-8")


HOLDER = (
    "import sys, time\n"
    "from llm_dit.experiments.store import ResultsStore\n"
    "with ResultsStore(sys.argv[1]).lock('mini'):\n"
    "    print('locked', flush=True)\n"
    "    time.sleep(600)\n"
)


def locked(env: Env) -> None:
    """Another process holding the run lock of 'mini' in the results directory; ends with the case."""
    mini_experiment(env)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(env.results)], stdout=subprocess.PIPE, text=True, env=subprocess_env()
    )

    def end() -> None:
        holder.kill()
        holder.wait(timeout=30)

    env.stack.callback(end)
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], START_DEADLINE_S)
    assert ready and holder.stdout.readline().strip() == "locked"
    env.fields["holder"] = str(holder.pid)


def taken_port(env: Env) -> None:
    """A loopback port something else listens on, for the case's duration."""
    sock = env.stack.enter_context(socket.socket())
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    env.fields["port"] = str(sock.getsockname()[1])


def reference_images(env: Env) -> None:
    """Files given as --reference-image: a text file, a truncated PNG and a PNG of the wrong size (32x32)."""
    (env.tmp / "notes.png").write_text("not an image\n")
    Image.new("RGB", (32, 32), (10, 20, 30)).save(env.tmp / "small.png")
    Image.new("RGB", (64, 64), (10, 20, 30)).save(env.tmp / "whole.png")
    data = (env.tmp / "whole.png").read_bytes()
    (env.tmp / "cut.png").write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------------------------------------------ the table


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    needles: tuple[str, ...]  # substrings of the error line
    setup: tuple[Setup, ...] = ()
    forbidden: tuple[str, ...] = ()  # substrings the error line must not have (a fix that does not work)
    notes: bool = False  # 'note: ' lines (or a sweep's heading) may come before the error
    env: tuple[tuple[str, str], ...] = ()
    may_import: frozenset[str] = frozenset()  # model libraries the check itself needs (the CUDA case: torch)


PROMPT = "A tabby cat on a windowsill"
LONG_PROMPT = " ".join(["a very long prompt about a cat"] * 20)  # ~150 tokens
SMALL = ("--width", "64", "--height", "64", "--steps", "2")
SMALL_SETS = ("--set", "width=64", "--set", "height=64", "--set", "steps=2")
OUT = ("-o", "{tmp}/out.png")


def gen(id_: str, extra: list[str], needles: list[str], *, prompt: str | None = PROMPT, **more: Any) -> Case:
    """A ``generate`` case (tests/test_cli.py's argv: the tiny checkpoint, 64x64, 2 steps, then ``extra``)."""
    argv = ["generate", *([prompt] if prompt is not None else []), "--model-path", "{ck}", *OUT, *SMALL, *extra]
    setup = (bad_files, *more.pop("setup", ()))
    return Case(f"generate-{id_}", tuple(argv), tuple(needles), setup=setup, **more)


GENERATE: list[Case] = [
    # the refusals of generate (they were tests/test_cli.py BAD_INPUT)
    gen("width-not-multiple", ["--width", "1000"], ["--width 1000", "not a multiple of 16", "992 or 1008"]),
    gen(
        "fp8-on-cpu", ["--dit-device", "cpu", "--fp8", "rowwise"], ["fp8 = 'rowwise' needs a CUDA GPU", 'fp8 = "none"']
    ),
    gen("fp8-unknown", ["--fp8", "row"], ["fp8 'row' is not valid", "rowwise"]),
    gen(
        "cudnn-on-cpu",
        ["--dit-device", "cpu", "--attention-backend", "_native_cudnn"],
        ["'_native_cudnn' is a CUDA kernel", "use native or auto"],
    ),
    gen("compile-unknown", ["--compile", "regionl"], ["compile 'regionl' is not valid", "regional"]),
    gen("width-zero", ["--height", "0"], ["height must be a positive multiple of 16"]),
    gen("steps-zero", ["--steps", "0"], ["--steps 0", "steps must be >= 1"]),
    gen("shift-zero", ["--shift", "0"], ["--shift", "shift must be > 0"]),
    gen("shift-negative", ["--shift=-1"], ["--shift", "shift must be > 0"]),
    gen("hidden-layer-low", ["--hidden-layer=-40"], ["--hidden-layer -40", "out of range -37..36"]),
    gen("hidden-layer-high", ["--hidden-layer", "37"], ["--hidden-layer 37", "out of range -37..36"]),
    gen("layer-weights-only-commas", ["--layer-weights=,"], ["--layer-weights", "must not be empty"]),
    gen("layer-weights-zero-sum", ["--layer-weights=-2:1,-3:-1"], ["--layer-weights", "sum to 0"]),
    gen("layer-weights-no-colon", ["--layer-weights=-2"], ["--layer-weights", "not 'layer:weight'"]),
    gen("layer-weights-not-number", ["--layer-weights=-2:abc"], ["--layer-weights", "must be a number"]),
    gen("layer-weights-same-state", ["--layer-weights=-2:1,35:1"], ["-2 and 35 name the same hidden state"]),
    gen("layer-weights-out-of-range", ["--layer-weights=-2:1,-40:1"], ["-40", "out of range -37..36"]),
    gen("long-prompt-mode", ["--long-prompt-mode", "bogus"], ["long_prompt_mode 'bogus' is not valid", "truncate"]),
    gen("refiner", ["--refiner", "bogus"], ["refiner 'bogus' is not valid", "skip"]),
    gen("padding", ["--padding", "bogus"], ["padding 'bogus' is not valid", "longest"]),
    gen("think-block-blank", ["--think-block="], ["think_block", "ambiguous", '"none"', '"empty"']),
    gen("max-text-tokens", ["--max-text-tokens", "2000"], ["max_text_tokens must be in 1..1504"]),
    gen("seed-negative", ["--seed=-1"], ["seed must be in 0.."]),
    gen("guidance-negative", ["--guidance-scale=-1"], ["guidance_scale must be >= 0"]),
    gen("sigmas-not-numbers", ["--sigmas", "1,x"], ["--sigmas", "comma-separated numbers"]),
    gen("sigmas-increasing", ["--sigmas", "0.5,0.9"], ["sigmas must be strictly decreasing"]),
    gen("sigmas-vs-steps", ["--steps", "2", "--sigmas", "1,0.6,0.2"], ["steps 2 conflicts with sigmas", "3"]),
    gen(
        "prompt-over-cap",
        ["--long-prompt-mode", "none", "--max-text-tokens", "64"],
        ["over the cap of 64", "long_prompt_mode"],
        prompt=LONG_PROMPT,
    ),
    gen("missing-checkpoint", ["--model-path", "{tmp}/no-such-model"], ["no-such-model does not exist", "diffusers"]),
    gen(
        "incomplete-checkpoint",
        ["--model-path", "{in}/ck"],
        ["incomplete", "missing vae/config.json"],
        setup=(incomplete_checkpoint,),
    ),
    gen(
        "output-parent-is-file", ["-o", "{tmp}/a-file/out.png"], ["cannot write", "a-file", "not a writable directory"]
    ),
    gen("output-is-directory", ["-o", "{tmp}/a-dir", "--overwrite"], ["is a directory"]),
    gen("toml-syntax", ["--config", "{tmp}/syntax.toml"], ["syntax.toml:2:", "TOML syntax error"]),
    gen("toml-unknown-key", ["--config", "{tmp}/typo.toml"], ["typo.toml:5:", "unknown key 'step'", "'steps'"]),
    gen("toml-bad-value", ["--config", "{tmp}/value.toml"], ["value.toml:2:", "width 1000 is not a multiple of 16"]),
    gen("config-missing", ["--config", "{tmp}/nope.toml"], ["nope.toml", "not found"]),
    gen("dit-float16", ["--dit-dtype", "float16"], ["float16", "overflows", "bfloat16"]),
    gen("encoder-fp16", ["--encoder-dtype", "fp16"], ["fp16", "overflows"]),
    gen("device-bogus", ["--dit-device", "tpu"], ["--dit-device tpu", "not valid"]),
    gen("model-foo", ["--model", "foo"], ["--model 'foo'", "only 'tiny'"]),
    gen("prompt-and-embeddings", ["--embeddings", "{tmp}/e.safetensors"], ["PROMPT", "--embeddings", "exactly one"]),
    gen("neither-prompt-nor-embeddings", [], ["PROMPT", "--embeddings", "exactly one"], prompt=None),
    gen("embeddings-missing", ["--embeddings", "{tmp}/e.safetensors"], ["--embeddings", "no such file"], prompt=None),
    gen(
        "embeddings-not-safetensors",
        ["--embeddings", "{tmp}/syntax.toml"],
        ["not a readable .safetensors"],
        prompt=None,
    ),
    # the rest of tests/test_cli.py's refusals
    gen("output-exists", ["-o", "{tmp}/exists.png"], ["{tmp}/exists.png", "already exists", "--overwrite"]),
    gen("unknown-profile", ["--config", "{tmp}/llm-dit.toml", "--profile", "nope"], ["profile 'nope' not found"]),
    gen("profile-without-config", ["--profile", "fast"], ["profile 'fast'", "--config"]),
    gen("markup-like-path", ["--model-path", "{tmp}/[/x]/model"], ["does not exist", "[/x]"]),
    # issue 11, section 2
    gen("output-in-proc", ["-o", "/proc/llm-dit-x.png"], ["/proc/llm-dit-x.png"]),
    gen("output-txt", ["-o", "{tmp}/x.txt"], ["{tmp}/x.txt", ".png"]),
    gen("steps-10000", ["--steps", "10000"], ["10000", "max_steps"]),
    gen("side-over-limit", ["--width", "8192"], ["8192", "max_image_side"]),
    gen("output-dir-exists", ["-o", "{tmp}/a-dir"], ["{tmp}/a-dir", "is a directory"], forbidden=["--overwrite"]),
    gen("control-character-bell", [], ["control character"], prompt="A cat\x07 on a mat"),
    gen("control-character-escape", [], ["control character"], prompt="A cat \x1b[2J on a mat"),
    gen("weights-truncated", ["--model-path", "{in}/ck"], [WEIGHTS], setup=(weights_truncated,)),
    gen("weights-garbage", ["--model-path", "{in}/ck"], [WEIGHTS], setup=(weights_garbage,)),
    # Whether CUDA is there is torch's answer, so torch may load; no model may.
    gen(
        "dit-device-cuda-unavailable",
        ["--dit-device", "cuda"],
        ["--dit-device"],
        forbidden=["--device "],
        env=(("CUDA_VISIBLE_DEVICES", ""),),
        may_import=frozenset({"torch"}),
    ),
    gen(
        "encoder-device-cuda-unavailable",
        ["--encoder-device", "cuda"],
        ["--encoder-device"],
        forbidden=["--device "],
        env=(("CUDA_VISIBLE_DEVICES", ""),),
        may_import=frozenset({"torch"}),
    ),
]

OTHER_GENERATION: list[Case] = [
    Case(
        "encode-not-safetensors",
        ("encode", PROMPT, "--model-path", "{ck}", "-o", "{tmp}/f.pt"),
        ("f.pt", ".safetensors"),
    ),
    Case(
        "encode-output-exists",
        ("encode", PROMPT, "--model-path", "{ck}", "-o", "{tmp}/exists.safetensors"),
        ("already exists",),
        setup=(bad_files,),
    ),
    Case(
        "profile-output-exists",
        ("profile", "-o", "{tmp}/exists.json", "--model-path", "{ck}", *SMALL),
        ("already exists",),
        setup=(bad_files,),
    ),
    Case("profile-repeats-0", ("profile", "--repeats", "0", "-o", "{tmp}/p.json"), ("--repeats must be >= 1",)),
    Case("tiny-model-exists", ("tiny-model", "{tmp}/a-dir"), ("{tmp}/a-dir", "already exists"), setup=(bad_files,)),
    Case("tiny-model-in-proc", ("tiny-model", "/proc/llm-dit-x"), ("/proc/llm-dit-x",)),
    Case(
        "config-show-unknown-profile",
        ("config", "show", "--config", "{tmp}/llm-dit.toml", "--profile", "fsat"),
        ("profile 'fsat' not found", "did you mean 'fast'"),
        setup=(bad_files,),
    ),
]

ABLATE = ("ablate", "--model-path", "{ck}", "--output-dir", "{res}", *SMALL_SETS)
OVER_CAP = ("--set", "long_prompt_mode=none", "--set", "max_text_tokens=32")


def abl(id_: str, extra: list[str], needles: list[str], **more: Any) -> Case:
    return Case(f"ablate-{id_}", (*ABLATE, *extra), tuple(needles), **more)


ABLATE_CASES: list[Case] = [
    # the refusals of ablate (they were tests/test_runner.py FAIL_FAST)
    abl(
        "bad-shift-override",
        ["-e", "steps_only", "--prompt-ids", "simple_001", "--seeds", "1,2", "--set", "shift=-1"],
        ["steps_only", "simple_001", "seed 1", "shift=-1", "shift must be > 0"],
    ),
    abl(
        "prompt-over-cap",
        ["-e", "shift_sweep", "--prompt-ids", "complex_001", "--seeds", "1,2", *OVER_CAP],
        ["shift_sweep run complex_001 seed 1 shift=converged_50", "over the cap of 32"],
    ),
    abl("unknown-experiment", ["-e", "shift_swep"], ["unknown experiment 'shift_swep'", "did you mean 'shift_sweep'"]),
    abl("unknown-set-key", ["-e", "shift_sweep", "--set", "shfit=2"], ["unknown parameter 'shfit'", "'shift'"]),
    abl("batch-size-0", ["-e", "shift_sweep", "--batch-size", "0"], ["--batch-size must be >= 1, got 0"]),
    abl(
        "unknown-prompt-id",
        ["-e", "shift_sweep", "--prompt-ids", "animal_001,animal_0001"],
        ["unknown prompt id 'animal_0001'", "animal_001"],
    ),
    abl("no-experiment", [], ["name an experiment", "--list-experiments"]),
    # the lock (tests/test_runner.py), held by a real process: refused before anything loads
    abl(
        "locked",
        ["--experiment-file", "{tmp}/mini.toml"],
        ["already being run by another process", "pid {holder}"],
        setup=(locked,),
    ),
    # tests/test_metrics_cli.py: a metric without weights stops the run before it starts
    abl(
        "metric-without-weights",
        ["--experiment-file", "{tmp}/mini.toml", "--compute-metrics", "--metric", "siglip"],
        ["metric 'siglip' needs local weights", "siglip_path"],
        setup=(mini_experiment,),
        notes=True,
    ),
    # issue 11, section 2
    abl(
        "experiment-file-is-directory",
        ["--experiment-file", "{tmp}/a-dir"],
        ["{tmp}/a-dir", "directory"],
        setup=(bad_files,),
        forbidden=["not found"],
    ),
    abl("seeds-not-integers", ["-e", "shift_sweep", "--seeds", "1,x"], ["--seeds", "1,x"], forbidden=["0.6"]),
    abl("seeds-float", ["-e", "shift_sweep", "--seeds", "1.5"], ["--seeds", "1.5"], forbidden=["0.6"]),
    abl(
        "steps-10000",
        ["--experiment-file", "{tmp}/mini.toml", "--set", "steps=10000"],
        ["max_steps"],
        setup=(mini_experiment,),
    ),
    abl("huge-plan", ["--experiment-file", "{tmp}/huge.toml"], ["max_runs"], setup=(huge_experiment,)),
    abl(
        "huge-plan-dry-run",
        ["--experiment-file", "{tmp}/huge.toml", "--dry-run"],
        ["max_runs"],
        setup=(huge_experiment,),
    ),
    abl(
        "weights-truncated",
        ["--experiment-file", "{tmp}/mini.toml", "--model-path", "{in}/ck"],
        [WEIGHTS],
        setup=(mini_experiment, weights_truncated),
    ),
    # options of issue 11's other sections, refused the same way
    abl("format-without-a-list", ["-e", "shift_sweep", "--format", "json"], ["--list-prompts and --dry-run; drop it"]),
    abl("format-unknown", ["--list-experiments", "--format", "xml"], ["--format 'xml' is not valid"]),
    abl("timing-repeats-without-timing", ["-e", "shift_sweep", "--timing-repeats", "3"], ["--timing-repeats applies"]),
    abl(
        "timing-repeats-0", ["-e", "shift_sweep", "--timing", "--timing-repeats", "0"], ["--timing-repeats must be 1.."]
    ),
    gen("set-unknown-key", ["--set", "shfit=2"], ["unknown parameter 'shfit'", "'shift'"]),
    # generate --set: the one vocabulary of run parameters, checked as ablate --set checks it
    gen("set-unknown", ["--set", "stpes=3"], ["--set stpes", "unknown parameter 'stpes'", "did you mean 'steps'"]),
    gen("set-dotted", ["--set", "generation.steps=3"], ["--set generation.steps", "use the flat name 'steps'"]),
    gen("set-not-a-parameter", ["--set", "device=cpu"], ["--set device", "not an experiment parameter"]),
    gen("set-no-equals", ["--set", "steps"], ["--set 'steps'", "expected key=value"]),
    gen("set-bad-value", ["--set", "guidance_scale=-1"], ["--set guidance_scale=-1: guidance_scale must be >= 0"]),
    gen(
        "set-and-flag", ["--steps", "3", "--set", "steps=4"], ["--steps 3 and --set steps=4 both set generation.steps"]
    ),
    gen("set-cfg-truncation", ["--set", "cfg_truncation=1.5"], ["--set cfg_truncation=1.5", "must be in 0..1"]),
    gen("set-cfg-normalization", ["--set", "cfg_normalization=1"], ["cfg_normalization must be true or false"]),
    gen("set-manipulation", ["--set", "token_manipulation=shufle_all"], ["did you mean 'shuffle_all'"]),
    gen("height-over-limit", ["--height", "8192"], ["height 8192 is above the limit of 4096", "max_image_side"]),
    gen(
        "prompt-template-token", [], ["PROMPT: contains the chat-template token <|im_end|>"], prompt="a <|im_end|> cat"
    ),
    gen("output-not-png-name", ["-o", "{tmp}/out.txt"], ["--output", "out.txt", "use a .png file name"]),
    Case(
        "sweep-unknown",
        ("sweep", "bogus"),
        ("unknown sweep 'bogus'", "hidden_layer", "shift_steps", "think_block", "long_prompt", "hidden_layer_blend"),
    ),
    Case(
        "sweep-metric-without-weights",
        (
            "sweep",
            "hidden_layer",
            "--quick",
            "--metric",
            "ssim,siglip",
            "--model-path",
            "{ck}",
            "--output-dir",
            "{res}",
            *SMALL_SETS,
        ),
        ("metric 'siglip' needs local weights", "siglip_path"),
        notes=True,
    ),
]

METRICS = ("metrics", "look", "--output-dir", "{res}")


def met(id_: str, extra: list[str], needles: list[str], **more: Any) -> Case:
    setup = (results_copy, *more.pop("setup", ()))
    return Case(f"metrics-{id_}", (*METRICS, *extra), tuple(needles), setup=setup, **more)


METRICS_CASES: list[Case] = [
    # tests/test_metrics_cli.py, on the look results
    met("reference-unknown-value", ["--reference", "shift=9.9"], ["--reference shift=9.9", "values of shift: '2.0'"]),
    met("metric-without-weights", ["--metric", "siglip"], ["metric 'siglip' needs local weights", "siglip_path"]),
    met("hpsv2-without-weights", ["--metric", "hpsv2"], ["metric 'hpsv2' needs local weights", "hpsv2_path"]),
    met("image-reward", ["--metric", "image_reward"], ["ImageReward is not available", "siglip or clip_score"]),
    met("fid-by-metric", ["--metric", "fid"], ["fid is a set-level metric", "--set-metric fid --against AXIS=LABEL"]),
    met(
        "set-metric-without-weights",
        ["--set-metric", "kid", "--against", "shift=2.0"],
        ["kid needs local Inception weights", "inception_weights"],
    ),
    met(
        "set-metric-kid-subset-too-large",
        ["--set-metric", "kid", "--against", "shift=2.0", "--kid-subset-size", "500", "--config", "{tmp}/inc.toml"],
        ["needs at least 500 images per set", "subset size of at most 6"],
        setup=(inception_config,),
    ),
    met(
        "set-metric-fid-too-few",
        ["--set-metric", "fid", "--against", "shift=2.0", "--config", "{tmp}/inc.toml"],
        ["FID needs at least 2049 images per set", "use kid"],
        setup=(inception_config,),
    ),
    met(
        "set-metric-empty-folder",
        ["--set-metric", "kid", "--against-folder", "{cwd}", "--config", "{tmp}/inc.toml"],
        ["holds no images", "give a folder of images"],
        setup=(inception_config,),
    ),
    met(
        "set-metric-both-references",
        ["--set-metric", "kid", "--against", "shift=2.0", "--against-folder", "{cwd}", "--config", "{tmp}/inc.toml"],
        ["needs one reference set"],
        setup=(inception_config,),
    ),
    met(
        "set-metric-with-metric", ["--set-metric", "kid", "--metric", "ssim"], ["--metric is an option of the per-run"]
    ),
    met("against-without-set-metric", ["--against", "shift=2.0"], ["--against applies to --set-metric fid|kid"]),
    Case(
        "content-preservation-not-a-text-image-metric",
        ("content-preservation", "look", "--output-dir", "{res}", "--metric", "ssim"),
        ("needs a text-image metric", "clip_score"),
        setup=(results_copy,),
    ),
    Case(
        "content-preservation-without-weights",
        ("content-preservation", "look", "--output-dir", "{res}", "--metric", "pickscore"),
        ("metric 'pickscore' needs local weights", "pickscore_path"),
        setup=(results_copy,),
    ),
    met("unknown-metric", ["--metric", "ssim,aesthetic"], ["unknown metric 'aesthetic'; metrics: "]),
    met(
        "reference-image-wrong-size",
        ["--reference-image", "{tmp}/small.png"],
        ["reference image {tmp}/small.png is 32x32 but run", "is 64x64"],
        setup=(reference_images,),
    ),
    met("reference-image-missing", ["--reference-image", "{tmp}/nope.png"], ["is not a file"]),
    Case(
        "metrics-unknown-experiment",
        ("metrics", "nope", "--output-dir", "{res}"),
        ("no experiment 'nope'",),
        setup=(results_copy,),
    ),
    Case(
        "metrics-no-database",
        ("metrics", "look", "--output-dir", "{tmp}/missing"),
        ("no results database in {tmp}/missing", "--output-dir"),
    ),
    met("format-without-list", ["--format", "json"], ["--format applies to --list"]),
    Case(
        "metrics-no-experiment-named",
        ("metrics", "--output-dir", "{res}"),
        ("name an experiment",),
        setup=(results_copy,),
    ),
    # issue 11, section 2
    met(
        "reference-image-not-an-image",
        ["--reference-image", "{tmp}/notes.png"],
        ["--reference-image", "{tmp}/notes.png"],
        setup=(reference_images,),
    ),
    met(
        "reference-image-truncated",
        ["--reference-image", "{tmp}/cut.png"],
        ["--reference-image", "{tmp}/cut.png"],
        setup=(reference_images,),
    ),
    Case(
        "metrics-reference-checked-before-the-database",
        ("metrics", "look", "--output-dir", "{tmp}/missing", "--reference", "shift"),
        ("--reference 'shift'", "AXIS=LABEL"),
        forbidden=("no results database",),
    ),
    Case(
        "metrics-reference-image-checked-before-the-database",
        ("metrics", "look", "--output-dir", "{tmp}/missing", "--reference-image", "{tmp}/nope.png"),
        ("{tmp}/nope.png", "is not a file"),
        forbidden=("no results database",),
    ),
]

COMPARE_ERRORS: list[tuple[list[str], list[str]]] = [  # tests/test_compare_cli.py
    ([], ["name an experiment", "--list"]),
    (["-e", "lok"], ["no experiment 'lok'", "did you mean 'look'"]),
    (["-e", "look", "--list"], ["--list"]),
    (["-e", "look", "--mode", "blink"], ["--mode 'blink'", "grid, side-by-side, diff"]),
    (["-e", "look", "--values", "9.9"], ["shift has no value '9.9'"]),
    (["-e", "look", "--prompt", "animal_01"], ["no value 'animal_01'", "did you mean"]),
    (["-e", "look", "--seed", "3"], ["seed has no value '3'"]),
    (["-e", "look", "--rows", "sede"], ["no dimension 'sede'", "did you mean 'seed'"]),
    (["-e", "look", "--rows", "shift"], ["both 'shift'"]),
    (["-e", "look", "--where", "shift"], ["expected DIMENSION=VALUES"]),
    (["-e", "look", "--values", '"-2'], ["--values", "double quotes"]),
    (["-e", "look", "--seed", "1", "--where", "seed=2"], ["--where and --seed both select seed"]),
    (["-e", "look", "--values", "2.0", "--where", "shift=3.0"], ["--where and --values both select shift"]),
    (["-e", "look", "--metric", "lpips"], ["no values of metric 'lpips'", "llm-dit metrics look"]),
    (["-e", "look", "--metric", "ssim", "--no-metrics"], ["contradict"]),
    (["-e", "look", "--mode", "side-by-side"], ["exactly two values of shift, got 3", "--values A,B"]),
    (["-e", "look", "--mode", "diff", "--values", "2.0"], ["exactly two values of shift, got 1"]),
    (["-e", "look", "--mode", "side-by-side", "--rows", "seed"], ["--rows applies to --mode grid"]),
    (["-e", "look", "--axis", "layer"], ["--axis applies to --mode side-by-side and diff", "--cols"]),
    (["-e", "look", "--threshold", "3"], ["--threshold applies to --mode diff"]),
    (["-e", "look", "--mode", "side-by-side", "--gain", "2", "--axis", "layer"], ["--gain applies"]),
    (["-e", "look", "--mode", "diff", "--axis", "layer", "--gain", "2"], ["--gain multiplies", "absolute only"]),
    (["-e", "look", "--mode", "side-by-side", "--axis", "layer", "--max-cols", "3"], ["--max-cols applies"]),
    (["-e", "look", "--max-cols", "0"], ["--max-cols must be >= 1"]),
    (["-e", "look", "--mode", "diff", "--axis", "layer", "--diff-mode", "blink"], ["diff mode 'blink'"]),
    (["-e", "look", "--mode", "diff", "--axis", "layer", "--threshold", "300"], ["--threshold must be 0..255"]),
    (["-e", "look", "-o", "grid.gif"], ["unknown image type '.gif'"]),
    (["-e", "look", "--cell-size", "5"], ["--cell-size must be 32..2048"]),
    (["-e", "look", "--max-rows", "0"], ["--max-rows must be >= 1"]),
    (["-e", "look", "-o", "{res}/look/grid.png"], ["inside the results directory"]),
]


def _compare_id(args: list[str]) -> str:
    # A path in the arguments is named by its file ("{res}/look/grid.png" -> "grid"), the rest by themselves.
    return "compare-" + ("-".join(Path(a).stem if "/" in a else a.strip('-"') for a in args) or "no-experiment")


def existing_grid_page(env: Env) -> None:
    results_copy(env)
    (env.cwd / "look_grid_p03.png").write_bytes(b"keep")


COMPARE_CASES: list[Case] = [
    Case(_compare_id(args), ("compare", *args, "--output-dir", "{res}"), tuple(needles), setup=(results_copy,))
    for args, needles in COMPARE_ERRORS
] + [
    Case("compare-no-database", ("compare", "--list", "--output-dir", "{tmp}/nowhere"), ("--output-dir",)),
    Case(
        "compare-existing-output",
        ("compare", "-e", "look", "--output-dir", "{res}"),
        ("look_grid_p03.png already exists", "--overwrite"),
        setup=(existing_grid_page,),
    ),
]

PLOT_ERRORS: list[tuple[list[str], list[str]]] = [  # the refusals of plot (they were in tests/test_plots.py)
    (["look", "-o", "x.pdf", "--output-dir", "/nonexistent"], ["--output x.pdf: use a .png or .svg"]),
    (["look", "--kind", "bars"], ["--kind 'bars' is not a plot kind", "line, heatmap, pareto"]),
    (["look", "--dpi", "5"], ["--dpi must be 20..600"]),
    (["lookk"], ["no experiment 'lookk'", "did you mean 'look'?", "experiments: look, look_custom"]),
    (["look", "-m", "lpips"], ["no lpips values", "llm-dit metrics look --metric lpips"]),
    (["look", "-m", "ssimm"], ["unknown metric 'ssimm'", "diversity_mad, mad, psnr, ssim, seconds_per_image_batched"]),
    (["look", "-a", "seed"], ["no axis 'seed'", "axes: shift, layer"]),
    (["look", "-k", "pareto", "-a", "shift"], ["--axis does not apply to --kind pareto"]),
    (["look", "-w", "shift=2.5"], ["shift has no value '2.5'", "values: '2.0', '3.0', '6.0'"]),
    (["look", "-w", "shift"], ["expected DIMENSION=VALUES"]),
    (["look_custom"], ["has no metric values yet", "llm-dit metrics look_custom"]),
    (["look_custom", "-k", "pareto", "-m", "seconds_per_image_batched"], ["puts time on x"]),
    (["look", "-m", "mad", "-o", "{tmp}/exists.png"], ["exists.png already exists", "--overwrite"]),
    (["look", "-m", "mad", "-o", "{res}/look/plot.png"], ["inside the results directory"]),
]


def _plot_case(args: list[str], needles: list[str]) -> Case:
    # A path in the arguments is named by its file ("exists.png" -> "exists"), the rest by themselves.
    name = "plot-" + "-".join(Path(a).stem if "/" in a else a.strip("-") for a in args)
    output_dir = [] if "--output-dir" in args else ["--output-dir", "{res}"]
    output = [] if "-o" in args else ["-o", "{tmp}/never.png"]
    return Case(name, ("plot", *args, *output_dir, *output), tuple(needles), setup=(results_copy, bad_files))


PLOT_CASES = [_plot_case(args, needles) for args, needles in PLOT_ERRORS]


def not_a_report_folder(env: Env) -> None:
    results_copy(env)
    (env.tmp / "notes").mkdir()
    (env.tmp / "notes" / "keep.txt").write_text("mine", encoding="utf-8")


def no_done_runs(env: Env) -> None:
    results_copy(env)
    _edit_db(env, "UPDATE runs SET status = 'failed', error = 'boom' WHERE experiment = 'look_custom'")


REPORT_ERRORS: list[tuple[str, list[str], list[str], tuple[Setup, ...]]] = [  # tests/test_report.py
    ("unknown-experiment", ["lookk"], ["no experiment 'lookk'", "did you mean 'look'?"], ()),
    ("unknown-metric", ["look", "--metric", "ssimm"], ["unknown metric 'ssimm'", "mad, psnr, ssim"], ()),
    ("metric-without-values", ["look_custom", "-m", "ssim"], ["no ssim values", "llm-dit metrics look_custom"], ()),
    ("baseline-unknown-axis", ["look", "--baseline", "shfit=3.0"], ["no axis 'shfit'", "did you mean 'shift'?"], ()),
    ("baseline-unknown-value", ["look", "--baseline", "shift=2.5"], ["shift has no value '2.5'"], ()),
    ("out-inside-results", ["look", "-o", "{res}/look/elsewhere"], ["inside the results directory"], ()),
    ("out-not-a-report", ["look", "-o", "{tmp}/notes"], ["holds no report.md"], (not_a_report_folder,)),
    ("no-done-runs", ["look_custom"], ["no done runs", "6 failed"], (no_done_runs,)),
]
REPORT_CASES: list[Case] = [
    Case(
        f"report-{name}",
        ("report", *args, "--output-dir", "{res}", *([] if "-o" in args else ["-o", "{tmp}/report"])),
        tuple(needles),
        setup=setup or (results_copy,),
    )
    for name, args, needles, setup in REPORT_ERRORS
] + [Case("report-no-database", ("report", "look", "--output-dir", "{tmp}/nowhere"), ("no results database in",))]


VIEW_CASES: list[Case] = [  # tests/test_viewer_api.py
    Case("view-no-database", ("view", "--output-dir", "{tmp}/nowhere"), ("no results database in", "--output-dir")),
    Case(
        "view-bad-port",
        ("view", "--output-dir", "{res}", "--port", "70000"),
        ("--port 70000 is not a TCP port",),
        setup=(results_copy,),
    ),
    Case(
        "view-taken-port",
        ("view", "--output-dir", "{res}", "--port", "{port}"),
        ("cannot listen on 127.0.0.1:{port}", "pick another --port"),
        setup=(results_copy, taken_port),
    ),
    Case(  # tests/test_viewer_rating.py
        "view-rater-without-rate",
        ("view", "--output-dir", "{res}", "--rater", "ann"),
        ("--rater only applies to rating mode", "--rate"),
        setup=(results_copy,),
    ),
    Case(
        "view-rate-public-host",
        ("view", "--output-dir", "{res}", "--rate", "--host", "0.0.0.0"),
        ("--rate writes judgements and listens on loopback only", "--host 0.0.0.0"),
        setup=(results_copy,),
    ),
]

EMBED_STATS = ("embed-stats", "--model", "tiny", "--prompt", "A cat")
EMBED_STATS_CASES: list[Case] = [  # tests/test_embed_stats_cli.py
    Case("embed-stats-no-condition", EMBED_STATS, ("give the conditions to compare",)),
    Case("embed-stats-unknown-setting", (*EMBED_STATS, "-c", "hidden_layr=-6"), ("hidden_layer",)),
    Case("embed-stats-layer-out-of-range", (*EMBED_STATS, "-c", "hidden_layer=99"), ("hidden_layer",)),
    Case("embed-stats-output-txt", (*EMBED_STATS, "-c", "default", "-o", "{tmp}/x.txt"), (".csv or .json",)),
    Case(
        "embed-stats-outlier-threshold",
        (*EMBED_STATS, "-c", "default", "--outlier-threshold", "0"),
        ("outlier-threshold",),
    ),
]


# The conditioning sources (issue 12): their run parameters under generate, ablate and embed-stats, and the caption
# and reference-stats commands. Cases of a source run on the tiny model (no --model-path: the cached one, whose
# tiny VL and embedding twins fit it; ``tiny_cached``), as a user without a config runs them; with the session's
# checkpoint ({ck}), which counts as a real one, an unconfigured source is refused.
def vl_files(env: Env) -> None:
    """Reference images in the working directory (ref.png, ref2.png), a text file and a PNG cut in half."""
    Image.new("RGB", (64, 64), (10, 20, 30)).save(env.cwd / "ref.png")
    Image.new("RGB", (64, 48), (30, 20, 10)).save(env.cwd / "ref2.png")
    (env.cwd / "notes.png").write_text("not an image\n")
    data = (env.cwd / "ref.png").read_bytes()
    (env.cwd / "cut.png").write_bytes(data[: len(data) // 2])


def features_file(env: Env) -> None:
    """A valid features file ({tmp}/features.safetensors: 'embeddings' [10, 32] float32), written without torch."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"embeddings": np.zeros((10, 32), dtype=np.float32)}, str(env.tmp / "features.safetensors"))


def tiny_cached(env: Env) -> None:
    """The cached tiny model built (on a fresh machine the first use builds it, which imports torch) and its
    tokenizer in the session's cache: what a machine has after its first run."""
    from llm_dit.models.tiny import tiny_checkpoint_path
    from llm_dit.models.tokenizer import checkpoint_tokenizer

    checkpoint_tokenizer(tiny_checkpoint_path())


VL = ("--set", "conditioning=vl", "--set", "vl_image=ref.png")
ONE_WEIGHT = ("--set", "vl_image_weights=[0.7]")
FILL_40 = ("--set", "fill_mode=pad_end_zero", "--set", "target_length=40")
TINY_GENERATE = ("generate", PROMPT, *OUT, *SMALL)  # no --model-path: the cached tiny model
TINY_ABLATE = ("ablate", "--output-dir", "{res}", *SMALL_SETS, "-e", "steps_only", "--prompt-ids", "simple_001")


def cond(id_: str, argv: tuple[str, ...], needles: list[str], **more: Any) -> Case:
    setup = (vl_files, tiny_cached, *more.pop("setup", ()))
    return Case(id_, argv, tuple(needles), setup=setup, **more)


CONDITIONING_CASES: list[Case] = [
    cond(
        "generate-vl-image-missing",
        (*TINY_GENERATE, "--set", "conditioning=vl", "--set", "vl_image=nope.png"),
        ["vl_image 'nope.png'", "no such file", "e.g. vl_image=ref.png"],
    ),
    cond(
        "generate-vl-image-not-an-image",
        (*TINY_GENERATE, "--set", "conditioning=vl", "--set", "vl_image=notes.png"),
        ["vl_image 'notes.png'", "is not an image PIL can read"],
        forbidden=["BytesIO", "0x"],  # PIL's message names its in-memory buffer, not the file
    ),
    cond(
        "generate-vl-image-truncated",  # the header parses; the pixels do not (it used to fail mid-run)
        (*TINY_GENERATE, "--set", "conditioning=vl", "--set", "vl_image=cut.png"),
        ["vl_image 'cut.png'", "truncated"],
    ),
    cond(
        "generate-style-image-missing",
        (*TINY_GENERATE, "--set", "conditioning=vl", "--set", "style_image=nope.png"),
        ["style_image 'nope.png'", "no such file"],
    ),
    cond(
        "generate-vl-without-image",
        (*TINY_GENERATE, "--set", "conditioning=vl"),
        ["conditioning=vl", "needs vl_image", "style_image"],
    ),
    cond(
        "generate-vl-token-mode-unknown",
        (*TINY_GENERATE, *VL, "--set", "vl_token_mode=imgonly"),
        ["vl_token_mode 'imgonly' is not valid", "image_only"],
    ),
    cond(
        "generate-vl-image-weights-count",
        (*TINY_GENERATE, "--set", "conditioning=vl", "--set", 'vl_image=["ref.png", "ref2.png"]', *ONE_WEIGHT),
        ["vl_image_weights has 1 weights for 2 vl_image(s)"],
    ),
    cond(
        "generate-vl-image-weights-for-one-image",
        (*TINY_GENERATE, *VL, "--set", "vl_image_weights=[0.7, 0.3]"),
        ["vl_image_weights has 2 weights for 1 vl_image(s)"],
    ),
    cond(
        "generate-style-and-vl-image",
        (*TINY_GENERATE, *VL, "--set", "style_image=ref2.png"),
        ["style_image", "vl_image", "exclude each other"],
    ),
    cond(
        "generate-vl-alpha-out-of-range",
        (*TINY_GENERATE, *VL, "--set", "vl_alpha=1.5"),
        ["vl_alpha must be in 0..1", "1.5"],
    ),
    cond(
        "generate-target-length-over-the-cap",
        (*TINY_GENERATE, *VL, "--max-text-tokens", "32", *FILL_40),
        ["target_length 40 is above the caption cap of 32"],
    ),
    cond(
        "generate-vl-image-with-embedding",
        (*TINY_GENERATE, "--set", "conditioning=embedding", "--set", "vl_image=ref.png"),
        ["vl_image", "conditioning=vl"],
        forbidden=["conditioning=vl or"],  # a VL input: only vl reads it
    ),
    cond(
        "generate-vl-and-embeddings-file",  # refused before the file loads (which imports torch)
        ("generate", *OUT, *SMALL, "--embeddings", "{tmp}/features.safetensors", *VL),
        ["--embeddings are caption features already", "drop conditioning=vl"],
        setup=(features_file,),
    ),
    # with the session's checkpoint (a real path): the source must be configured
    gen(
        "vl-unconfigured-with-a-real-checkpoint",
        [*VL],
        ["conditioning = vl needs a local Qwen3-VL-4B-Instruct checkpoint", "[default.vl] model_path"],
        setup=(vl_files,),
    ),
    gen(
        "embedding-unconfigured-with-a-real-checkpoint",
        ["--set", "conditioning=embedding"],
        ["Qwen3-Embedding-4B checkpoint", "[default.embedding] model_path"],
    ),
    gen(
        "fill-mode-without-target-length",
        ["--set", "fill_mode=pad_end_zero"],
        ["fill_mode needs target_length", "target_length=300"],
    ),
    gen("target-length-without-fill-mode", ["--set", "target_length=40"], ["target_length needs fill_mode"]),
    gen(
        "vl-alpha-with-text",
        ["--set", "vl_alpha=0.5"],
        ["vl_alpha", "conditioning=vl or conditioning=embedding"],
    ),
    gen("conditioning-unknown", ["--set", "conditioning=clip"], ["conditioning 'clip' is not valid", "embedding"]),
    # ablate: the planner names the run
    cond(
        "ablate-vl-image-missing",
        (*TINY_ABLATE, "--set", "conditioning=vl", "--set", "vl_image=nope.png"),
        ["steps_only run simple_001", "vl_image 'nope.png'", "no such file"],
    ),
    abl(
        "vl-unconfigured-with-a-real-checkpoint",
        ["-e", "steps_only", "--prompt-ids", "simple_001", *VL],
        ["steps_only run simple_001", "Qwen3-VL-4B-Instruct checkpoint", "[default.vl] model_path"],
        setup=(vl_files,),
    ),
    abl(
        "fill-mode-without-target-length",
        ["-e", "steps_only", "--prompt-ids", "simple_001", "--set", "fill_mode=pad_end_zero"],
        ["steps_only run simple_001", "fill_mode needs target_length"],
    ),
    cond(
        "ablate-vl-token-mode-axis",
        ("ablate", "--output-dir", "{res}", "--experiment-file", "{tmp}/tokens.toml"),
        ["tokens.toml:", "axis 'vl_token_mode' value \"imgonly\"", "did you mean 'image_only'"],
        setup=(token_mode_experiment,),
    ),
    # --image (the built-in VL experiments' input images) and the placeholders that take them
    cond(
        "ablate-image-missing",
        ("ablate", "--output-dir", "{res}", "-e", "vl_alpha", "--image", "nope.png"),
        ["--image 'nope.png'", "no such file"],
        forbidden=["--image="],
    ),
    cond(
        "ablate-image-not-an-image",
        ("ablate", "--output-dir", "{res}", "-e", "vl_alpha", "--image", "notes.png"),
        ["--image 'notes.png'", "is not an image PIL can read"],
    ),
    cond(
        "ablate-image-truncated",
        ("ablate", "--output-dir", "{res}", "-e", "vl_alpha", "--dry-run", "--image", "cut.png"),
        ["--image 'cut.png'", "truncated"],
    ),
    cond(
        "ablate-image-for-an-experiment-without-images",
        ("ablate", "--output-dir", "{res}", "-e", "steps_only", "--image", "ref.png"),
        ["experiment steps_only takes no input image", "drop --image"],
    ),
    cond(
        "ablate-multi-reference-one-image",
        ("ablate", "--output-dir", "{res}", "-e", "vl_multi_reference", "--image", "ref.png"),
        ["vl_multi_reference needs 2 images", "{image2}", "got 1: pass --image twice"],
    ),
    cond(
        "ablate-one-image-given-twice",
        ("ablate", "--output-dir", "{res}", "-e", "vl_alpha", "--image", "ref.png", "--image", "ref2.png"),
        ["vl_alpha takes 1 input image, got 2", "pass --image once"],
    ),
    cond(
        "ablate-placeholder-misspelt",
        ("ablate", "--output-dir", "{res}", "--experiment-file", "{tmp}/typo.toml"),
        ["typo.toml:9:", 'vl_image = "{imag}" is not a placeholder', "{image2}"],
        setup=(placeholder_experiments,),
    ),
    cond(
        "ablate-placeholder-without-an-image",
        ("ablate", "--output-dir", "{res}", "--experiment-file", "{tmp}/bare.toml"),
        ["bare needs an input image ({image} in [base] vl_image), got 0", "pass --image once", "images = [...]"],
        setup=(placeholder_experiments,),
    ),
    cond(
        "sweep-vl-image-missing",
        ("sweep", "vl", "--quick", "--output-dir", "{res}", "--image", "nope.png"),
        ["--image 'nope.png'", "no such file"],
    ),
    cond(
        "sweep-all-with-an-image",  # --all: text-encoder sweeps, which take no image
        ("sweep", "--all", "--quick", "--output-dir", "{res}", "--image", "ref.png"),
        ["experiment hidden_layer takes no input image"],
    ),
    # embed-stats: a condition's images are checked with the rest, before any model loads
    cond(
        "embed-stats-vl-image-missing",
        (*EMBED_STATS, "-c", "default", "-c", "conditioning=vl,vl_image=nope.png"),
        ["condition 'conditioning=vl,vl_image=nope.png'", "vl_image 'nope.png'", "no such file"],
    ),
    Case(
        "embed-stats-vl-with-a-real-checkpoint",
        ("embed-stats", "--model-path", "{ck}", "--prompt", "A cat", "-c", "default", "-c", f"conditioning=vl,{VL[3]}"),
        ("Qwen3-VL-4B-Instruct checkpoint",),
        setup=(vl_files,),
    ),
    # caption
    cond("caption-missing-image", ("caption", "nope.png"), ["IMAGE 'nope.png'", "no such file"], forbidden=["IMAGE="]),
    cond("caption-not-an-image", ("caption", "notes.png"), ["IMAGE 'notes.png'", "is not an image"]),
    Case(
        "caption-with-a-real-checkpoint",
        ("caption", "ref.png", "--model-path", "{ck}"),
        ("Qwen3-VL-4B-Instruct checkpoint", "[default.vl] model_path"),
        setup=(vl_files,),
    ),
    cond(
        "caption-max-new-tokens-0", ("caption", "ref.png", "--max-new-tokens", "0"), ["--max-new-tokens must be >= 1"]
    ),
    cond("caption-output-txt", ("caption", "ref.png", "-o", "{tmp}/caps.txt"), ["caps.txt", ".json"]),
    cond("caption-empty-prompt", ("caption", "ref.png", "--prompt", " "), ["--prompt is empty"]),
    # reference-stats
    Case(
        "reference-stats-layer-out-of-range",
        ("reference-stats", "--layer", "99", "--model-path", "{ck}"),
        ("--layer 99 is out of range -37..36",),
    ),
    Case("reference-stats-top-0", ("reference-stats", "--top", "0", "--model-path", "{ck}"), ("--top must be >= 1",)),
    Case(
        "reference-stats-missing-checkpoint",
        ("reference-stats", "--model-path", "{tmp}/no-such-model"),
        ("no-such-model does not exist",),
    ),
]

# compare-embedding-models (issue 14): refused before either model loads (tests/test_embedding_comparison.py)
COMPARE_EMBEDDINGS = ("compare-embedding-models", "--model", "tiny", "--prompt", "A cat")
EMBEDDING_COMPARISON_CASES: list[Case] = [
    Case("compare-embedding-models-output-txt", (*COMPARE_EMBEDDINGS, "-o", "{tmp}/x.txt"), (".json",)),
    Case(
        "compare-embedding-models-layer-out-of-range",
        (*COMPARE_EMBEDDINGS, "--embedding-layers", "-2,99", "-o", "{tmp}/x.json"),
        ("--embedding-layers", "99", "-37..36"),
        setup=(tiny_cached,),
    ),
    Case(
        "compare-embedding-models-think-outside-the-vocabulary",
        ("compare-embedding-models", "--model", "tiny", "--prompt", "a <think> cat", "-o", "{tmp}/x.json"),
        ("token ids [151667]", "outside the embedding model's vocabulary"),
        setup=(tiny_cached,),
    ),
    Case(
        "compare-embedding-models-with-a-real-checkpoint",
        ("compare-embedding-models", "--model-path", "{ck}", "--prompt", "A cat", "-o", "{tmp}/x.json"),
        ("--embedding-path DIR", "[default.embedding] model_path"),
    ),
]

# caption-study (issue 14): refused before any model loads (tests/test_caption_study.py has the rest of its checks)
CAPTION_STUDY = ("caption-study", "--model", "tiny", "--output-dir", "{res}")
CAPTION_STUDY_CASES: list[Case] = [
    Case(
        "caption-study-unknown-fill-mode",
        (*CAPTION_STUDY, "--fill-modes", "content_only,pad_end_one"),
        ("--fill-modes: unknown value 'pad_end_one'", "content_only, pad_end_zero"),
    ),
    Case(
        "caption-study-length-above-the-cap",
        (*CAPTION_STUDY, "--target-lengths", "300,2000"),
        ("--target-lengths: 2000", "1..1504"),
    ),
    Case(
        "caption-study-hidden-layers-in-vl-mode",
        (*CAPTION_STUDY, "--vl-hidden-layers", "-6", "--hidden-layers", "-2"),
        ("VL mode sweeps --vl-hidden-layers",),
    ),
    Case(
        "caption-study-captions-file-missing-a-source",
        (*CAPTION_STUDY, "--prompts", "a cat,a dog", "--captions", "{tmp}/captions.json"),
        ("no caption for a_dog_seed42", "source names"),
        setup=(lambda env: (env.tmp / "captions.json").write_text('{"a_cat_seed42": "A cat."}'),),
    ),
    Case(
        "caption-study-with-a-real-checkpoint-and-no-vl",
        ("caption-study", "--model-path", "{ck}", "--output-dir", "{res}"),
        ("[default.vl] model_path",),
    ),
]

# A damaged results database, under every command that reads or writes one: one line naming the file, the
# database untouched. The view cases pass an impossible port so that a viewer that did start fails instead of
# serving (the needle tells the two errors apart).
READERS: dict[str, tuple[str, ...]] = {
    "ablate": (*ABLATE, "--experiment-file", "{tmp}/mini.toml"),
    "ablate-dry-run": (*ABLATE, "--experiment-file", "{tmp}/mini.toml", "--dry-run"),
    "metrics": (*METRICS, "--metric", "mad"),
    "compare": ("compare", "-e", "look", "--output-dir", "{res}"),
    "compare-list": ("compare", "--list", "--output-dir", "{res}"),
    "plot": ("plot", "look", "--output-dir", "{res}", "-o", "{tmp}/never.png"),
    "report": ("report", "look", "--output-dir", "{res}", "-o", "{tmp}/report"),
    "view": ("view", "--output-dir", "{res}", "--port", "70000"),
}
DATABASE_CASES: list[Case] = [
    Case(f"{command}-db-{damage}", argv, ("{res}/results.db",), setup=(setup, mini_experiment))
    for damage, setup in DAMAGED_DBS.items()
    for command, argv in READERS.items()
]

CASES: list[Case] = [
    *GENERATE,
    *OTHER_GENERATION,
    *ABLATE_CASES,
    *METRICS_CASES,
    *COMPARE_CASES,
    *PLOT_CASES,
    *REPORT_CASES,
    *VIEW_CASES,
    *EMBED_STATS_CASES,
    *CONDITIONING_CASES,
    *EMBEDDING_COMPARISON_CASES,
    *CAPTION_STUDY_CASES,
    *DATABASE_CASES,
]


def problems_of(case: Case, reply: dict[str, Any], env: Env, changed: list[str]) -> list[str]:
    """Everything wrong with how ``case`` was refused (empty: refused as it should be)."""
    if "failure" in reply:
        return [reply["failure"]]
    out = []
    err = ANSI.sub("", reply["stderr"] + reply["leaked"])
    if reply["rc"] != 2:
        out.append(f"exit status {reply['rc']}, not 2")
    if "Traceback" in err or "Traceback" in reply["stdout"]:
        out.append("a traceback")
    if reply["stdout"]:
        out.append(f"stdout is not empty: {reply['stdout'][:500]!r}")
    lines = [line for line in err.splitlines() if line.strip()]
    before = lines[:-1]
    if case.notes:
        before = [line for line in before if not line.startswith(("note: ", "sweep "))]
    if before or not lines:
        out.append(f"{len(lines)} stderr lines, not one")
    last = lines[-1] if lines else ""
    if not last.startswith("error: "):
        out.append("the last stderr line is not 'error: ...'")
    out += [f"{env.fill(n)!r} not in the error line" for n in case.needles if env.fill(n) not in last]
    out += [f"{env.fill(f)!r} in the error line" for f in case.forbidden if env.fill(f) in last]
    heavy = set(reply["heavy"]) - case.may_import
    if heavy:
        out.append(f"imported {', '.join(sorted(heavy))}")
    if changed:
        out.append(f"changed under the case directory: {', '.join(changed)}")
    if out:
        out.append(f"stderr: {err[-2000:]!r}")
    return out


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_refused_in_one_line_before_any_work(
    case: Case, worker: Worker, tiny_checkpoint: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with ExitStack() as stack:
        env = Env(tmp_path / "case", tmp_path / "inputs", tiny_checkpoint, request, stack)
        env.cwd.mkdir(parents=True)
        env.inputs.mkdir()
        for step in case.setup:
            step(env)
        before = results_snapshot(env.tmp)
        reply = worker.run([env.fill(arg) for arg in case.argv], env.cwd, dict(case.env))
        after = results_snapshot(env.tmp)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    problems = problems_of(case, reply, env, changed)
    assert not problems, "\n".join(problems)


def test_the_table_has_unique_ids_and_covers_every_command() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))
    from llm_dit.cli.entrypoint import COMMANDS

    assert {name for name, _ in COMMANDS} | {"config"} <= {case.argv[0] for case in CASES}


def test_the_judge_catches_each_kind_of_failure(tmp_path: Path) -> None:
    """problems_of on hand-made replies: each way a refusal can go wrong is reported, a clean one is not."""
    env = Env(tmp_path, tmp_path, tmp_path, None, ExitStack())  # type: ignore[arg-type]
    case = Case("probe", (), ("needle",), forbidden=("--device ",))
    clean = {"rc": 2, "stdout": "", "stderr": "error: the needle\n", "leaked": "", "heavy": []}
    assert problems_of(case, clean, env, []) == []
    spoiled: list[tuple[str, dict[str, Any]]] = [
        ("exit status 0, not 2", {"rc": 0}),
        ("a traceback", {"stderr": "Traceback (most recent call last):\nerror: the needle\n"}),
        ("stdout is not empty", {"stdout": "table"}),
        ("2 stderr lines, not one", {"stderr": "note: cut\nerror: the needle\n"}),
        ("2 stderr lines, not one", {"leaked": "a warning written to fd 2\n"}),
        ("the last stderr line is not 'error: ...'", {"stderr": "needle\n"}),
        ("'needle' not in the error line", {"stderr": "error: something else\n"}),
        ("'--device ' in the error line", {"stderr": "error: the needle; use --device cpu\n"}),
        ("imported torch", {"heavy": ["torch"]}),
    ]
    for problem, change in spoiled:
        found = problems_of(case, {**clean, **change}, env, [])
        assert any(line.startswith(problem) for line in found), (problem, found)
    assert "changed under the case directory: results/results.db" in problems_of(
        case, clean, env, ["results/results.db"]
    )
    notes_ok = Case("probe", (), ("needle",), notes=True)
    assert problems_of(notes_ok, {**clean, "stderr": "note: cut\nerror: the needle\n"}, env, []) == []
    allowed = Case("probe", (), ("needle",), may_import=frozenset({"torch"}))
    assert problems_of(allowed, {**clean, "heavy": ["torch"]}, env, []) == []


def test_the_worker_reports_imports_and_outcomes_and_starts_afresh(
    worker: Worker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A command that succeeds, writes and imports the model libraries (tiny-model) is seen doing all three, and
    the case after it runs in a fresh child with nothing imported."""
    env = Env(tmp_path, tmp_path, tiny_checkpoint, None, ExitStack())  # type: ignore[arg-type]
    env.cwd.mkdir()
    before = results_snapshot(env.tmp)
    reply = worker.run(["tiny-model", str(env.cwd / "probe-ck")], env.cwd, {})
    changed = sorted(set(results_snapshot(env.tmp)) - set(before))
    assert reply["rc"] == 0 and {"torch", "diffusers"} <= set(reply["heavy"]), reply
    problems = problems_of(Case("probe", (), ("x",)), reply, env, changed)
    for problem in ("exit status 0, not 2", "the last stderr line is not", "imported ", "changed under the case"):
        assert any(line.startswith(problem) for line in problems), (problem, problems)
    started = worker.started
    after = worker.run(["config", "show", "--profile", "nope"], env.cwd, {})
    assert worker.started == started + 1  # a new child
    assert after["heavy"] == [] and after["rc"] == 2, after


def test_over_long_prompt_is_a_note_not_an_error(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A prompt over the cap in 'truncate' mode makes its image and says on the terminal that it was cut."""
    out = tmp_path / "long.png"
    argv = ["generate", LONG_PROMPT, "--model-path", tiny_checkpoint, "-o", out, *SMALL, "--max-text-tokens", "32"]
    rc, stdout, err = run(capsys, *argv)
    assert rc == 0, err
    assert out.is_file() and stdout == ""
    tokens = read_record(out)["token_count"]  # the whole prompt's count, which the note must give with the cap
    assert tokens > 32
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert any(f"{tokens} tokens" in line and "cap of 32" in line for line in notes), err


VL_MIX = """
name = "vl_mix"
description = "vl_alpha x fill_mode through the VL source"
seeds = [1]

[prompts]
ids = ["animal_001"]

[base]
conditioning = "vl"
vl_image = "ref.png"
target_length = 40

[[axes]]
name = "vl_alpha"
values = [0, 0.5, 1]

[[axes]]
name = "fill_mode"
values = ["pad_end_zero", "pad_end_mean"]
"""


def test_a_dry_run_with_conditioning_parameters_imports_no_model_library(
    worker: Worker, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``ablate --dry-run`` of runs through the VL source (an input image, vl_alpha and fill_mode as axes) plans
    every run, with the image's sha256 and the source's identity in its params, imports no model library (the
    image is hashed, not encoded; the tiny twin's identity is its name) and writes nothing."""
    env = Env(tmp_path / "case", tmp_path / "inputs", tiny_checkpoint, None, ExitStack())  # type: ignore[arg-type]
    env.cwd.mkdir(parents=True)
    vl_files(env)
    tiny_cached(env)
    (env.cwd / "vl_mix.toml").write_text(VL_MIX, encoding="utf-8")
    before = results_snapshot(env.tmp)
    argv = ["ablate", "--experiment-file", "vl_mix.toml", "--output-dir", str(env.results), *SMALL_SETS]
    reply = worker.run([*argv, "--dry-run", "--format", "json"], env.cwd, {})
    assert "failure" not in reply, reply["failure"]
    assert (reply["rc"], reply["heavy"]) == (0, []), reply["stderr"]
    plan = json.loads(reply["stdout"])
    assert sorted((r["variables"]["vl_alpha"], r["variables"]["fill_mode"]) for r in plan) == sorted(
        (a, f) for a in ("0", "0.5", "1") for f in ("pad_end_zero", "pad_end_mean")
    )
    sha = hashlib.sha256((env.cwd / "ref.png").read_bytes()).hexdigest()
    for run_ in plan:
        params = run_["params"]
        assert (params["conditioning"], params["vl_image"]) == ("vl", [str(env.cwd / "ref.png")])
        assert params["input_sha256"] == {"vl_image": [sha]}
        assert params["source_model"].startswith("tiny-vl-") and not run_["done"]
        assert params["source_numerics"] == "cpu/torch.float32"  # [vl] device/torch_dtype "auto" on a CPU
    assert results_snapshot(env.tmp) == before and not env.results.exists()

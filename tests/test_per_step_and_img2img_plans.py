"""Planning per-step conditioning and image-to-image: run ids, resolved values, replace rules, errors (no model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from llm_dit.config import Settings
from llm_dit.errors import LlmDitError
from llm_dit.experiments.loader import load_experiment_file
from llm_dit.experiments.planner import plan
from llm_dit.experiments.prompts import Prompt

CAT = Prompt(id="animal_001", text="A fluffy orange cat", category="animals", subjects=("cat",), descriptors=())


def _image(path: Path, colour: tuple[int, int, int]) -> str:
    Image.new("RGB", (32, 32), colour).save(path)
    return str(path)


def _plan(tmp_path: Path, body: str, seeds: tuple[int, ...] = (42,)) -> dict[str, object]:
    path = tmp_path / "exp.toml"
    path.write_text('name = "exp"\n' + body, encoding="utf-8")
    runs = plan(load_experiment_file(path), [CAT], list(seeds), Settings(), model_fingerprint="fp")
    return {next(iter(r.variables.values()), "") if r.variables else "": r for r in runs}


def test_init_image_enters_the_run_id_by_its_bytes_and_strength_is_resolved(tmp_path):
    a = _image(tmp_path / "a.png", (200, 10, 10))
    copy = tmp_path / "copy.png"
    shutil.copy(a, copy)
    other = _image(tmp_path / "b.png", (10, 200, 10))
    runs = _plan(
        tmp_path,
        f"""
[[axes]]
name = "start"
values = [
  {{ label = "none", init_image = "" }},
  {{ label = "a", init_image = "{a}" }},
  {{ label = "copy", init_image = "{copy}" }},
  {{ label = "other", init_image = "{other}" }},
  {{ label = "a_0.3", init_image = "{a}", strength = 0.3 }},
]
""",
    )
    ids = {label: run.run_id for label, run in runs.items()}
    assert ids["a"] != ids["none"] and ids["a"] != ids["other"] and ids["a"] != ids["a_0.3"]
    # The same bytes at another path make the same image: the id is derived, not equal, only because a plan keeps
    # its ids unique (the second run of the same image gets one derived from the first).
    assert runs["a"].params["input_sha256"] == runs["copy"].params["input_sha256"]
    assert runs["a"].params["strength"] == 0.6 and runs["a_0.3"].params["strength"] == 0.3
    assert runs["none"].params["strength"] is None and runs["none"].params["input_sha256"] is None
    assert runs["a"].params["init_image"] == str(Path(a).resolve())


def test_a_text_run_keeps_its_id_when_the_new_parameters_are_at_their_defaults(tmp_path):
    plain = _plan(tmp_path, '[[axes]]\nname = "x"\nvalues = [{ label = "p", hidden_layer = -2 }]\n')["p"]
    unset = '[[axes]]\nname = "x"\nvalues = [{ label = "p", hidden_layer = -2, prompt_switch = "", init_image = "" }]\n'
    switched_off = _plan(tmp_path, unset)["p"]
    assert plain.run_id == switched_off.run_id


def test_strength_without_init_image_is_refused_naming_the_run(tmp_path):
    with pytest.raises(
        LlmDitError, match=r"exp run animal_001 seed 42 s=half: .*strength is read only with init_image"
    ):
        _plan(tmp_path, '[[axes]]\nname = "s"\nvalues = [{ label = "half", strength = 0.5 }]\n')


def test_an_alpha_schedule_and_an_alpha_replace_each_other_across_levels(tmp_path):
    ref = _image(tmp_path / "ref.png", (90, 90, 200))
    runs = _plan(
        tmp_path,
        f"""
[base]
conditioning = "vl"
vl_image = "{ref}"
vl_alpha = 0.3

[[axes]]
name = "alpha"
values = [
  {{ label = "constant", vl_alpha = 0.3 }},
  {{ label = "linear", vl_alpha_schedule = "linear:1:0" }},
  {{ label = "step", vl_alpha_schedule = "step:1.0:0.0@sigma=0.7" }},
]
""",
    )
    assert runs["linear"].params["vl_alpha"] is None
    assert runs["linear"].params["vl_alpha_schedule"] == "linear:1.0:0.0"
    assert runs["constant"].params["vl_alpha_schedule"] is None and runs["constant"].params["vl_alpha"] == 0.3
    assert len({r.run_id for r in runs.values()}) == 3
    assert runs["step"].params["vl_blend"] is None  # alpha 1 then 0: no step mixes, the blend is inert


def test_prompt_switch_needs_its_step(tmp_path):
    with pytest.raises(LlmDitError, match="prompt_switch needs prompt_switch_step"):
        _plan(tmp_path, '[[axes]]\nname = "p"\nvalues = [{ label = "b", prompt_switch = "a dog" }]\n')

"""Speed settings of the DiT: how 'auto' resolves, which layers FP8 would touch, FP8 in run ids, and regional
compile on the tiny model: the same pixels as eager, and no recompiles once a sweep's first shapes are seen."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llm_dit.config import PipelineSettings, Settings
from llm_dit.errors import LlmDitError
from llm_dit.generation.acceleration import block_linears, recompile_counts, resolve
from llm_dit.generation.checks import resolved_numerics
from llm_dit.generation.pipeline import LlmDitPipeline


def test_auto_resolves_by_device_and_cuda_only_options_are_refused_elsewhere() -> None:
    auto = PipelineSettings()
    assert resolve(auto, "cuda").facts() == {
        "compile": "regional/inductor", "compile_mode": "default", "attention_backend": "_native_cudnn", "fp8": "none"
    }  # fmt: skip
    assert resolve(auto, "cpu").facts() == {
        "compile": "none", "compile_mode": "default", "attention_backend": "native", "fp8": "none"
    }  # fmt: skip
    with pytest.raises(
        LlmDitError, match=r"fp8 = 'rowwise' needs a CUDA GPU .* runs on cpu; set \[default\.pipeline\]"
    ):
        resolve(PipelineSettings(fp8="rowwise"), "cpu")
    with pytest.raises(LlmDitError, match=r"attention_backend = '_native_cudnn' is a CUDA kernel, but .* use native"):
        resolve(PipelineSettings(attention_backend="_native_cudnn"), "cpu")
    assert resolve(PipelineSettings(compile="full", compile_backend="aot_eager"), "cpu").compile == "full"


def test_fp8_enters_run_ids_and_speed_settings_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_dit.generation import checks

    base = Settings()
    with pytest.raises(LlmDitError, match="fp8 = 'tensorwise' needs a CUDA GPU"):  # here, before anything loads
        resolved_numerics(base.model_copy(update={"pipeline": PipelineSettings(fp8="tensorwise")}))
    # As on a CUDA machine with torchao: the labels the run id hashes.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "torchao" else real(name, *a))
    monkeypatch.setattr(checks.devices, "numerics_label", lambda *args: "cuda/torch.bfloat16")
    plain = resolved_numerics(base)
    fp8 = resolved_numerics(base.model_copy(update={"pipeline": PipelineSettings(fp8="tensorwise")}))
    compiled = resolved_numerics(base.model_copy(update={"pipeline": PipelineSettings(compile="regional")}))
    assert fp8["dit"] == plain["dit"] + "+fp8_tensorwise" and fp8["vae"] == plain["vae"]
    assert compiled == plain  # compile changes rounding only: an execution fact, not another run


def test_fp8_would_quantise_the_block_linears_only(tiny_checkpoint: Path) -> None:
    from llm_dit.models.checkpoint import load_transformer

    transformer = load_transformer(tiny_checkpoint, "cpu", torch.float32)
    names = block_linears(transformer)
    blocks = {name.split(".")[0] for name in names}
    assert blocks == {"noise_refiner", "context_refiner", "layers"}
    every = {n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    left = sorted(every - set(names))
    # The embedders and the final layer stay in the model's dtype (also the blocks' adaLN modulation, which is
    # inside a block: listed above unless it is not an nn.Linear).
    assert left and all(not n.startswith(("layers.", "noise_refiner.", "context_refiner.")) for n in left), left


SIZES = [(64, 64), (64, 96), (96, 64)]
PROMPTS = ["a cat", "a red cube on a blue table under a lamp", "a lighthouse on a cliff at dusk, waves, gulls, fog"]


@pytest.mark.numerics
def test_regional_compile_gives_eager_s_pixels_and_stops_recompiling(tiny_checkpoint: Path) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    eager = LlmDitPipeline.from_pretrained(tiny_checkpoint, pipeline={"device": "cpu", "torch_dtype": "float32"})
    compiled = LlmDitPipeline.from_pretrained(
        tiny_checkpoint,
        pipeline={"device": "cpu", "torch_dtype": "float32", "compile": "regional", "compile_backend": "aot_eager"},
    )

    def images(pipe: LlmDitPipeline, sizes: list[tuple[int, int]], prompts: list[str]) -> list[torch.Tensor]:
        return [pipe.generate(prompt, seed=3, width=w, height=h, steps=2).image for w, h in sizes for prompt in prompts]

    # Warm-up: the first two shapes of each kind (automatic dynamic shapes mark a changing size dynamic).
    first = images(compiled, SIZES[:2], PROMPTS[:2])
    warm = recompile_counts()
    assert warm["unique_graphs"] > 0  # it did compile
    rest = images(compiled, SIZES, PROMPTS)
    after = recompile_counts()
    assert after == warm, (warm, after)  # a new resolution and a new caption length: no new graph
    assert compiled.acceleration is not None and compiled.acceleration.facts()["compile"] == "regional/aot_eager"
    record = compiled.generate(PROMPTS[0], seed=3, width=64, height=64, steps=2).record
    assert record["acceleration"]["compile"] == "regional/aot_eager"
    # aot_eager runs the traced aten graph without fusion: the same arithmetic as eager, so the same pixels.
    reference = images(eager, SIZES[:2], PROMPTS[:2]) + images(eager, SIZES, PROMPTS)
    for got, want in zip(first + rest, reference, strict=True):
        assert torch.equal(got, want)
    assert eager.acceleration is not None and eager.acceleration.compile == "none"


def test_the_dry_run_counts_compile_time(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cli_helpers import run

    config = tmp_path / "config.toml"
    config.write_text('[default.pipeline]\ndevice = "cpu"\ncompile = "regional"\n', encoding="utf-8")
    argv = ["sweep", "hidden_layer", "--quick", "--dry-run", "--model-path", tiny_checkpoint]
    rc, out, err = run(capsys, *argv, "--output-dir", tmp_path / "results", "--config", config)
    assert rc == 0, err
    assert "compile: regional compile: ~17 s on the first DiT forward" in " ".join(out.split())
    assert "1 here" in " ".join(out.split())  # one sampling shape: one size and step count
    rc, out, err = run(capsys, *argv, "--output-dir", tmp_path / "results")  # default on CPU: no compile
    assert rc == 0, err
    assert "compile:" not in out


def test_non_finite_latents_fail_the_batch_before_anything_is_decoded(tiny_checkpoint: Path) -> None:
    pipe = LlmDitPipeline.from_pretrained(tiny_checkpoint, pipeline={"device": "cpu"})

    def poison(module: torch.nn.Module, args: tuple, output: tuple) -> tuple:
        # The real tiny DiT, its output made NaN where one FP8 layer going non-finite would leave it.
        return ([o * float("nan") for o in output[0]], *output[1:])

    handle = pipe.transformer.register_forward_hook(poison)
    decoded: list[int] = []
    pipe.vae.register_forward_pre_hook(lambda module, args: decoded.append(1))
    try:
        with pytest.raises(LlmDitError, match=r"the DiT produced non-finite latents for 1 image\(s\) of 64x64"):
            pipe.generate("a cat", seed=1, width=64, height=64, steps=2)
    finally:
        handle.remove()
    assert not decoded
    assert torch.isfinite(pipe.generate("a cat", seed=1, width=64, height=64, steps=2).image).all()


def test_fp8_without_torchao_is_refused_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchao" else real(name, *a))
    with pytest.raises(LlmDitError, match=r"fp8 = 'rowwise' needs torchao, which is not installed: pip install"):
        resolve(PipelineSettings(fp8="rowwise"), "cuda")

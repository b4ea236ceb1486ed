"""refiner_drift (seed 001, Q3.2): how much the DiT's context refiner changes the caption, per token and per layer,
and the metric of it in the metrics pass (opt-in: it loads the experiment's own checkpoint)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_dit.config import MetricsSettings
from llm_dit.experiments.store import ResultsStore
from llm_dit.generation.refiner import refiner_drift, refiner_states
from llm_dit.metrics.registry import METRICS, select_metrics

pytestmark = pytest.mark.usefixtures("cached_tokenizer")


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint: Path) -> Any:
    from llm_dit.generation.pipeline import LlmDitPipeline

    return LlmDitPipeline.from_pretrained(tiny_checkpoint)


def test_the_states_are_what_enters_and_leaves_each_refiner_layer(pipe: Any) -> None:
    dit = pipe.transformer
    caption = torch.randn(20, dit.config.cap_feat_dim, generator=torch.Generator().manual_seed(0))
    # What each layer is called with, recorded independently of the hooks under test.
    calls: list[tuple[torch.Tensor, Any, Any]] = []
    pre = [
        layer.register_forward_pre_hook(lambda _m, args: calls.append((args[0].clone(), args[1], args[2])))
        for layer in dit.context_refiner
    ]
    try:
        states = refiner_states(dit, caption)
    finally:
        for handle in pre:
            handle.remove()
    assert len(states) == len(dit.context_refiner) + 1 == 3
    # The input: the cap embedder applied to the caption (the DiT's own module, called directly).
    with torch.no_grad():
        embedded = dit.cap_embedder(caption)
    assert torch.equal(states[0], embedded.float())
    for k, (x, mask, freqs) in enumerate(calls):
        assert torch.equal(x[0, :20].float(), states[k])  # layer k's input is the state before it
        with torch.no_grad():
            out = dit.context_refiner[k](x, mask, freqs)
        assert torch.equal(out[0, :20].float(), states[k + 1])  # and its output the state after it
    assert not any(m._forward_hooks for m in [dit.cap_embedder, *dit.context_refiner])  # hooks removed


def test_drift_is_the_cosine_per_token_and_follows_the_refiner_mode(pipe: Any) -> None:
    dit = pipe.transformer
    caption = torch.randn(7, dit.config.cap_feat_dim, generator=torch.Generator().manual_seed(1))
    states = refiner_states(dit, caption)
    drift = refiner_drift(dit, caption)
    expected = [
        (s0 * s).sum(-1) / (s0.norm(dim=-1) * s.norm(dim=-1))
        for s0, s in ((states[0], states[1]), (states[0], states[2]))
    ]
    for got, want in zip(drift.after_layer, expected, strict=True):
        torch.testing.assert_close(got, want)  # float32 cosine of the same rows: torch's default tolerance
    assert torch.equal(drift.per_layer[0], drift.after_layer[0])  # layer 1's input is the refiner's input
    assert drift.whole == float(drift.after_layer[-1].mean())
    assert refiner_drift(dit, caption, "skip").whole == 1.0 and not refiner_drift(dit, caption, "skip").per_layer
    double = refiner_drift(dit, caption, "double")
    assert len(double.per_layer) == 4
    assert all(torch.equal(a, b) for a, b in zip(double.per_layer[:2], drift.per_layer, strict=True))


def test_refiner_drift_is_opt_in_and_computed_from_the_runs_own_features(
    pipe: Any, tiny_results: Path, tmp_path: Path
) -> None:
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.metrics.compute import MetricsPass

    spec = METRICS["refiner_drift"]
    chosen, notes = select_metrics(None, MetricsSettings())
    assert spec not in chosen and any("refiner_drift" in n and "--metric" in n for n in notes)
    root = tmp_path / "results"
    shutil.copytree(tiny_results, root)
    with ResultsStore(root) as store:
        report = MetricsPass(store, MetricsSettings()).run("look_custom", [spec])
        runs = [r for r in store.runs("look_custom") if r["status"] == "done"]
        values = {v.run_id: v for v in store.metric_values("look_custom") if v.name == "refiner_drift"}
    assert report.computed == {"refiner_drift": len(runs)}
    encoder = ZImageTextEncoder.from_pretrained(store.experiment("look_custom")["metadata"]["model_path"])
    for run in runs:
        params = run["params"]
        layer = {"layer_weights": params["layer_weights"]} if params["layer_weights"] else {"hidden_layer": -2}
        features = encoder.encode(run["prompt_text"], **layer)[0].embeddings
        assert values[run["run_id"]].value == refiner_drift(pipe.transformer, features).whole
        assert values[run["run_id"]].params["model"] == store.experiment("look_custom")["metadata"]["model_fingerprint"]
    with ResultsStore(root) as store:
        assert MetricsPass(store, MetricsSettings()).run("look_custom", [spec]).computed == {"refiner_drift": 0}

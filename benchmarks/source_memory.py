"""Peak GPU memory and time of the conditioning sources at full size (random bf16 weights), side by side in one run.

Builds the full Z-Image-Turbo architecture (6.15B DiT, Qwen3-4B, FLUX VAE), Qwen3-VL-4B-Instruct (4.44B) and
Qwen3-Embedding-4B with random weights directly on the GPU (memory and time do not depend on weight values), each
encoder through a loader so that freeing it really frees it (as a checkpoint on disk), then measures at 1024^2, 8
steps, a 1024^2 reference image:

1. a text run, Qwen3-4B + DiT + VAE resident (the baseline: 21.7 GiB in docs/benchmarks.md);
2. a VL run (vl_alpha 0.3) with every encoder it used kept resident (what ``generate`` and ``ablate`` do by default);
3. the same VL run the way ``ablate --offload-encoder`` does it: encode (Qwen3-4B, freed, then Qwen3-VL, freed),
   then sample: the peak while encoding and while sampling;
4. one Qwen3-VL forward (seconds, rows) and one Qwen3-Embedding forward, and that the VL source's hidden states
   equal ``Qwen3VLForConditionalGeneration``'s own (max |difference|);
5. per-step conditioning and image-to-image, encoder outputs cached, side by side with the plain VL run (time per image,
   peak): ``vl_alpha_schedule = linear:1:0`` (a feature tensor per step), ``step:1:0@sigma=0.7`` (two), a prompt
   switch, and ``init_image`` at strength 0.6 (5 of 8 steps plus one VAE encode).

Run on the GPU machine (see docs/benchmarks.md):  python benchmarks/source_memory.py --json out.json
CPU smoke run of the script:                        python benchmarks/source_memory.py --preset tiny --size 64
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reset_peak() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None


def held_gib() -> float | None:
    return torch.cuda.memory_allocated() / 2**30 if torch.cuda.is_available() else None


def timed(fn: Any) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="image side, and the reference image's side")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument("--preset", default="full", help="'tiny' for a CPU smoke run of this script")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from transformers import Qwen3Config, Qwen3Model

    from llm_dit.conditioning.embedding_encoder import EmbeddingEncoder
    from llm_dit.conditioning.text_encoder import ZImageTextEncoder
    from llm_dit.conditioning.vl_encoder import VLEncoder
    from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline
    from llm_dit.generation.sources import SourceEncoders
    from llm_dit.models import checkpoint
    from llm_dit.models.embedding_model import (
        FULL_EMBEDDING_CONFIG,
        TINY_EMBEDDING_CONFIG,
        _embedding_tokenizer,
        make_embedding_model,
    )
    from llm_dit.models.tiny import _build_context, _component_seed, component_configs, make_components, randomize_
    from llm_dit.models.tokenizer import build_qwen3_tokenizer
    from llm_dit.models.vl import FULL_VL_CONFIG, TINY_VL_CONFIG, build_vl_processor, make_tiny_vl_model

    full = args.preset == "full"
    on_gpu = torch.cuda.is_available()
    if full and not on_gpu:
        raise SystemExit("the full-size measurement needs a CUDA GPU (use --preset tiny for a CPU smoke run)")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    vl_config = FULL_VL_CONFIG if full else TINY_VL_CONFIG
    embedding_config = FULL_EMBEDDING_CONFIG if full else TINY_EMBEDDING_CONFIG
    text_config = component_configs(args.preset)["text_encoder"]

    # Each encoder is built by its loader on first use, so unload() frees it as it frees a checkpoint's weights.
    def text_loader() -> torch.nn.Module:
        config = Qwen3Config(**text_config)
        config.dtype = dtype
        with _build_context(device, dtype):
            model = Qwen3Model(config)
        return randomize_(model, _component_seed(0, "text_encoder")).eval().requires_grad_(False)

    processor = build_vl_processor()
    embedding_tokenizer = _embedding_tokenizer()
    vl_text = vl_config["text_config"]
    vl = VLEncoder(
        lambda: (make_tiny_vl_model(0, vl_config, device, dtype), processor),
        num_layers=vl_text["num_hidden_layers"],
        hidden_size=vl_text["hidden_size"],
    )
    embedding = EmbeddingEncoder(
        lambda: (make_embedding_model(0, embedding_config, device, dtype), embedding_tokenizer),
        num_layers=embedding_config["num_hidden_layers"],
        hidden_size=embedding_config["hidden_size"],
        vocab_size=embedding_config["vocab_size"],
    )
    parts = make_components(args.preset, seed=0, device=device, dtype=dtype, with_tokenizer=False)
    del parts["text_encoder"]
    reset_peak()
    encoder = ZImageTextEncoder(
        build_qwen3_tokenizer(),
        model_loader=text_loader,
        num_layers=text_config["num_hidden_layers"],
        max_caption_tokens=checkpoint.dit_max_caption_tokens(parts["transformer"].config),
    )
    pipe = LlmDitPipeline(encoder, parts["transformer"], parts["vae"], model_path=f"random-{args.preset}")
    pipe.size_multiple = checkpoint.vae_size_multiple(parts["vae"].config)
    pipe.cap_feat_dim = checkpoint.dit_cap_feat_dim(parts["transformer"].config)
    pipe.sources = SourceEncoders(vl=lambda: vl, embedding=lambda: embedding)

    folder = Path(tempfile.mkdtemp(prefix="llm-dit-sources-"))
    reference = folder / "ref.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)).save(reference)
    prompt = "A tabby cat sleeping on a sunlit windowsill, soft morning light, 35mm photograph"
    common = {"width": args.size, "height": args.size, "steps": args.steps, "seed": 42}
    text_request = GenerationRequest.build(prompt, **common)
    vl_request = GenerationRequest.build(
        prompt, conditioning="vl", vl_image=str(reference), vl_alpha=0.3, vl_blend="interpolate", **common
    )
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "preset": args.preset,
        "size": args.size,
        "steps": args.steps,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
    }
    gib = {"dit": sum(p.numel() for p in parts["transformer"].parameters()) * dtype.itemsize / 2**30}

    with torch.no_grad():
        # 1. text baseline, Qwen3-4B + DiT + VAE resident (a warm-up run first: kernels, allocator).
        pipe.generate_batch([text_request])
        reset_peak()
        seconds, _ = timed(lambda: pipe.generate_batch([GenerationRequest.build(prompt, **{**common, "seed": 7})]))
        results["text_run"] = {"peak_gib": peak_gib(), "seconds": round(seconds, 3)}
        gib["text_encoder"] = sum(p.numel() for p in encoder.model.parameters()) * dtype.itemsize / 2**30

        # 2. VL run with every encoder kept resident.
        reset_peak()
        seconds, (vl_result,) = timed(lambda: pipe.generate_batch([vl_request]))
        results["vl_run_resident"] = {
            "peak_gib": peak_gib(),
            "seconds_incl_vl_build": round(seconds, 3),
            "caption_rows": vl_result.record["embedding_length"],
            "vl_rows": vl_result.record["source_passes"]["main"][0]["rows"],
        }
        gib["vl"] = sum(p.numel() for p in vl.model.parameters()) * dtype.itemsize / 2**30

        # 5. per-step conditioning and img2img against the plain VL run; encodings cached (composition and sampling).
        variants = {
            "vl_alpha_0.3": {"vl_alpha": 0.3},
            "schedule_linear_1_0": {"vl_alpha_schedule": "linear:1:0"},
            "schedule_step_sigma_0.7": {"vl_alpha_schedule": "step:1:0@sigma=0.7"},
            "prompt_switch_at_4": {"vl_alpha": 0.3, "prompt_switch": "A watercolour harbour", "prompt_switch_step": 4},
            "img2img_strength_0.6": {"vl_alpha": 0.3, "init_image": str(reference), "strength": 0.6},
        }
        per_step: dict[str, Any] = {}
        vl_common = {**common, "conditioning": "vl", "vl_image": str(reference), "vl_blend": "interpolate"}
        for name, extra in variants.items():
            request = GenerationRequest.build(prompt, **vl_common, **extra)
            pipe.generate_batch([request])  # encodes (cached from here on) and warms up
            reset_peak()
            seconds, (result,) = timed(lambda request=request: pipe.generate_batch([request]))
            per_step[name] = {
                "seconds": round(seconds, 3),
                "peak_gib": peak_gib(),
                "steps": result.record["steps"],
                "distinct_step_features": result.record.get("distinct_step_features", 1),
            }
        base = per_step["vl_alpha_0.3"]["seconds"]
        for entry in per_step.values():
            entry["time_ratio_to_vl_alpha_0.3"] = round(entry["seconds"] / base, 3)
        results["per_step_and_img2img"] = per_step

        # 4. one VL forward, and the source's hidden states vs the full model's own.
        image = Image.open(reference).convert("RGB")
        vl.forward([image], prompt)  # warm-up
        seconds, forward = timed(lambda: vl.forward([image], prompt))
        inputs = processor(text=[forward.formatted_text], images=[image], return_tensors="pt").to(device)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        own = vl.model(**inputs, output_hidden_states=True).hidden_states
        diff = max((a[0] - b).abs().max().item() for a, b in zip(own, forward.hidden_states, strict=True))
        results["vl_forward"] = {
            "seconds": round(seconds, 4),
            "rows": forward.length,
            "image_tokens": forward.image_token_counts,
            "hidden_states_max_abs_diff_vs_transformers": diff,
        }
        del forward, own, inputs
        embedding.encode_layers([prompt], [-2])  # builds it, warm-up
        seconds, _ = timed(lambda: embedding.encode_layers([prompt], [-2]))
        results["embedding_forward"] = {"seconds": round(seconds, 4)}
        gib["embedding"] = sum(p.numel() for p in embedding.model.parameters()) * dtype.itemsize / 2**30
        reset_peak()
        results["all_resident_gib"] = held_gib()

        # 3. the same VL run as ablate --offload-encoder runs it: encode with each encoder freed after its inputs,
        # then sample with only the DiT and VAE resident.
        pipe.offload_encoder()
        embedding.unload()
        pipe.clear_encoding_cache()
        reset_peak()
        results["offload_resident_before_gib"] = held_gib()
        encode_s, _ = timed(lambda: pipe.precompute_encodings([vl_request], offload=True))
        pipe.offload_encoder()
        encode_peak = peak_gib()
        reset_peak()
        sample_s, (offloaded,) = timed(lambda: pipe.generate_batch([vl_request]))
        results["vl_run_offloaded"] = {
            "encode_peak_gib": encode_peak,
            "sample_peak_gib": peak_gib(),
            "encode_seconds_incl_builds": round(encode_s, 3),
            "sample_seconds": round(sample_s, 3),
            "same_image_as_resident": bool(torch.equal(offloaded.image, vl_result.image)),
        }
    results["weights_gib"] = {k: round(v, 3) for k, v in gib.items()}
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Full-size check on a GPU: llm-dit's loop vs diffusers' ZImagePipeline, side by side, same seed.

Builds the full Z-Image-Turbo architecture (6.15B DiT, Qwen3-4B encoder, FLUX VAE) with random weights
directly on the GPU (timing and shapes do not depend on weight values), then generates at 1024x1024, 8 steps,
bf16 with both and prints:
- the max |difference| between the two images, end to end (each encodes its own prompt) and with
  identical prompt embeddings given to both (isolates the sampling loop);
- seconds per image of both (mean of timed runs after a warm-up), at batch 1 and at batch B;
- peak GPU memory.

Run on the GPU machine (see docs/benchmarks.md):  python benchmarks/gpu_reference.py [--runs 3] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, runs: int) -> tuple[float, object]:
    out = None
    times = []
    for _ in range(runs):
        sync()
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times), out


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    parser.add_argument("--preset", default="full", help="'tiny' for a CPU smoke run of this script")
    args = parser.parse_args()

    from diffusers import ZImagePipeline

    from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline
    from llm_dit.models.tiny import make_components

    on_gpu = torch.cuda.is_available()
    if args.preset == "full" and not on_gpu:
        raise SystemExit("the full-size check needs a CUDA GPU (use --preset tiny for a CPU smoke run)")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    gen_device = device.type
    t0 = time.perf_counter()
    parts = make_components(args.preset, seed=0, device=device, dtype=dtype)
    build_s = time.perf_counter() - t0
    n_dit = sum(p.numel() for p in parts["transformer"].parameters())
    n_enc = sum(p.numel() for p in parts["text_encoder"].parameters())
    print(
        f"built {args.preset} random components in {build_s:.1f} s: DiT {n_dit / 1e9:.2f}B, encoder {n_enc / 1e9:.2f}B"
    )

    reference = ZImagePipeline(**parts)
    reference.set_progress_bar_config(disable=True)
    ours = LlmDitPipeline.from_components(
        parts["tokenizer"], parts["text_encoder"], parts["transformer"], parts["vae"], model_path="random-full-size"
    )
    prompt = "A tabby cat sleeping on a sunlit windowsill, soft morning light, 35mm photograph"
    size, steps, seed = args.size, args.steps, args.seed

    def run_reference(batch: int = 1, prompt_embeds=None):
        gens = [torch.Generator(gen_device).manual_seed(seed + i) for i in range(batch)]
        kwargs = {"prompt_embeds": prompt_embeds} if prompt_embeds is not None else {"prompt": [prompt] * batch}
        return reference(
            width=size,
            height=size,
            num_inference_steps=steps,
            guidance_scale=0.0,
            generator=gens if batch > 1 else gens[0],
            output_type="pt",
            **kwargs,
        ).images

    def run_ours(batch: int = 1, embeddings=None):
        requests = [
            GenerationRequest.build(
                None if embeddings is not None else prompt,
                embeddings=embeddings,
                seed=seed + i,
                width=size,
                height=size,
                steps=steps,
            )
            for i in range(batch)
        ]
        return torch.stack([r.image for r in ours.generate_batch(requests)])

    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    results: dict[str, object] = {"device": name, "preset": args.preset, "size": size, "steps": steps}
    with torch.no_grad():
        # Warm-up both (kernels, allocator), then time alternately so drift hits both alike.
        run_reference()
        run_ours()
        reset_peak()
        ref_s, ref_img = timed(run_reference, args.runs)
        ref_peak = peak_gib()
        reset_peak()
        our_s, our_img = timed(run_ours, args.runs)
        our_peak = peak_gib()
        end_to_end = (our_img.float().cpu() - ref_img.float().cpu()).abs().max().item()

        def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
            return (a.float().cpu() - b.float().cpu()).abs().max().item()

        # Where end-to-end differences come from: diffusers pads prompts to 512 tokens, llm-dit to the
        # longest; in bf16 that changes the encoder's rounding. Compare with each side's embeddings swapped.
        embeds = ours.encoder.encode(prompt)[0].embeddings
        ref_embeds = reference.encode_prompt([prompt], device=device, do_classifier_free_guidance=False)[0][0]
        same_emb = max_diff(run_ours(embeddings=embeds), run_reference(prompt_embeds=[embeds]))
        given_ref_emb = max_diff(run_ours(embeddings=ref_embeds), ref_img[:1])
        results.update(
            embedding_max_abs_diff=max_diff(embeds, ref_embeds),
            embedding_max_abs=embeds.float().abs().max().item(),
            # Batched with a 512-token filler, our prompt is padded to 512 as in diffusers.
            embedding_max_abs_diff_padded_to_512=max_diff(
                ours.encoder.encode([prompt, "x " * 600], max_text_tokens=512)[0].embeddings, ref_embeds
            ),
            max_abs_diff_diffusers_run_to_run=max_diff(run_reference(), ref_img),
            max_abs_diff_given_diffusers_embeddings=given_ref_emb,
        )
        results.update(
            diffusers_s_per_image=ref_s,
            llm_dit_s_per_image=our_s,
            speed_ratio_diffusers_over_llm_dit=ref_s / our_s,
            max_abs_diff_end_to_end=end_to_end,
            max_abs_diff_same_embeddings=same_emb,
            finite=bool(torch.isfinite(our_img).all() and torch.isfinite(ref_img).all()),
            image_std=float(our_img.float().std()),
            diffusers_peak_gib=ref_peak,
            llm_dit_peak_gib=our_peak,
        )
        if args.batch > 1:
            b = args.batch
            run_reference(b)
            run_ours(b)
            ref_b, ref_bimg = timed(lambda: run_reference(b), max(1, args.runs - 1))
            our_b, our_bimg = timed(lambda: run_ours(b), max(1, args.runs - 1))
            results.update(
                batch=b,
                diffusers_s_per_image_batched=ref_b / b,
                llm_dit_s_per_image_batched=our_b / b,
                max_abs_diff_batched=(our_bimg.float().cpu() - ref_bimg.float().cpu()).abs().max().item(),
            )

    for key, value in results.items():
        print(f"{key:40s} {value:.4f}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()

"""GPU speed of llm-dit's fast paths vs diffusers' ZImagePipeline, side by side in one process, same modules and seeds.

Full-size Z-Image-Turbo with random bf16 weights built on the GPU (timing and shapes do not depend on weight values;
random weights say nothing about how FP8 changes real images). Sections (``--sections``, comma list, in this order):

- ``e2e``: seconds per image at 1024^2, 8 steps: diffusers (eager, its defaults), llm-dit eager, then llm-dit with
  each fast path (attention backend, regional compile, both; FP8 + both on a copy of the DiT), at batch 1 and at
  ``--batch``; first-call (compile) time; peak memory; each fast path's max |image - eager|, and PSNR and SSIM vs
  eager on the 8-bit images.
- ``forward``: one DiT forward at 1024^2 with a ~100-token caption per configuration, and its TFLOP/s (FLOPs counted
  by ``torch.utils.flop_counter`` on the eager forward).
- ``fp8probe``: where FP8 row-wise goes non-finite: forward hooks on every quantised linear layer report the first
  whose output is not finite, with its input's statistics (all-zero rows, max |x|).
- ``sweep``: a mixed-shape sweep (3 resolutions x caption lengths 20-600 tokens, 8 steps, batch 1): images per hour
  of diffusers in a loop vs llm-dit with its default settings, and torch._dynamo's graph counts after warm-up. Its
  first-call time is a cold compile only when run alone (``--sections sweep``): compiled blocks of earlier sections in
  the same process are reused.

    python benchmarks/gpu_speed.py --json docs/results/gpu_speed_h200.json        # on the GPU machine
    python benchmarks/gpu_speed.py --preset tiny --size 64 --sections e2e,forward   # CPU smoke run of the script
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_reference import peak_gib, reset_peak, sync, timed

PROMPT = "A tabby cat sleeping on a sunlit windowsill, soft morning light, 35mm photograph, shallow depth of field"


def words(n: int) -> str:
    """A prompt of roughly ``n`` Qwen3 tokens."""
    base = "a quiet harbour town at dawn with fishing boats, gulls, wet cobblestones and warm lantern light "
    text = (base * (n // 16 + 1)).split()
    return " ".join(text[: max(1, int(n * 0.75))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--sections", default="e2e,forward,fp8probe,sweep")
    parser.add_argument("--fp8", default="rowwise,tensorwise", help="FP8 modes to time (empty: none)")
    parser.add_argument("--preset", default="full", help="'tiny' for a CPU smoke run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sections = [s for s in args.sections.split(",") if s]

    from diffusers import ZImagePipeline

    from llm_dit.config import PipelineSettings
    from llm_dit.generation.acceleration import accelerate, recompile_counts
    from llm_dit.generation.image import to_pil
    from llm_dit.generation.pipeline import GenerationRequest, LlmDitPipeline
    from llm_dit.metrics import pixel
    from llm_dit.models.tiny import make_components

    on_gpu = torch.cuda.is_available()
    if args.preset == "full" and not on_gpu:
        raise SystemExit("the full-size benchmark needs a CUDA GPU (use --preset tiny for a CPU smoke run)")
    device = torch.device("cuda" if on_gpu else "cpu")
    dtype = torch.bfloat16 if on_gpu else torch.float32
    parts = make_components(args.preset, seed=0, device=device, dtype=dtype)
    eager_dit = parts["transformer"]
    # Untouched copies of the DiT for the fast paths (compile and FP8 change a module in place).
    pristine = copy.deepcopy(eager_dit)
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if on_gpu else "cpu",
        "torch": torch.__version__,
        "preset": args.preset,
        "size": args.size,
        "steps": args.steps,
    }
    size, steps = args.size, args.steps
    fast_backend = "_native_cudnn" if on_gpu else "native"
    compile_backend = "inductor" if on_gpu else "aot_eager"

    def ours_with(transformer: torch.nn.Module, **settings: Any) -> LlmDitPipeline:
        pipe_settings = PipelineSettings(**{"compile": "none", "attention_backend": "native", **settings})
        return LlmDitPipeline.from_components(
            parts["tokenizer"], parts["text_encoder"], transformer, parts["vae"], pipeline=pipe_settings
        )

    def run_ours(pipe: LlmDitPipeline, batch: int = 1, prompt: str = PROMPT, width: int = size, height: int = size):
        requests = [
            GenerationRequest.build(prompt, seed=42 + i, width=width, height=height, steps=steps) for i in range(batch)
        ]
        return torch.stack([r.image for r in pipe.generate_batch(requests)])

    reference = ZImagePipeline(**{**parts, "transformer": eager_dit})
    reference.set_progress_bar_config(disable=True)

    def run_reference(batch: int = 1, prompt: str = PROMPT, width: int = size, height: int = size):
        gens = [torch.Generator(device.type).manual_seed(42 + i) for i in range(batch)]
        return reference(
            prompt=[prompt] * batch, width=width, height=height, num_inference_steps=steps, guidance_scale=0.0,
            generator=gens if batch > 1 else gens[0], output_type="pt",
        ).images  # fmt: skip

    with torch.no_grad():
        if "e2e" in sections:
            e2e: dict[str, Any] = {}
            run_reference()
            reset_peak()
            e2e["diffusers"] = {"s_per_image": timed(run_reference, args.runs)[0], "peak_gib": peak_gib()}
            run_reference(args.batch)
            e2e["diffusers"]["s_per_image_batched"] = timed(lambda: run_reference(args.batch), 2)[0] / args.batch
            regional = {"compile": "regional", "compile_backend": compile_backend}
            configs: list[tuple[str, dict[str, Any]]] = [
                ("eager", {}),
                (f"attention {fast_backend}", {"attention_backend": fast_backend}),
                ("regional compile", regional),
                (f"regional compile + {fast_backend}", {**regional, "attention_backend": fast_backend}),
            ]
            modes = [m for m in args.fp8.split(",") if m] if on_gpu else []
            configs += [
                (f"fp8 {mode} + regional compile + {fast_backend}",
                 {**regional, "attention_backend": fast_backend, "fp8": mode})
                for mode in modes
            ]  # fmt: skip
            eager_image = None
            for name, settings in configs:
                # Every fast path changes the module in place: each gets its own copy; eager runs the pristine one.
                transformer = copy.deepcopy(pristine) if settings else pristine
                pipe = ours_with(transformer, **settings)
                sync()
                t0 = time.perf_counter()
                try:
                    run_ours(pipe)
                except Exception as exc:  # report and go on: one failing fast path must not hide the others
                    e2e[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                    del pipe, transformer
                    continue
                sync()
                first_s = time.perf_counter() - t0
                reset_peak()
                seconds, image = timed(lambda pipe=pipe: run_ours(pipe), args.runs)
                row: dict[str, Any] = {"s_per_image": seconds, "first_call_s": first_s, "peak_gib": peak_gib()}
                row["finite"] = bool(torch.isfinite(image).all())
                if eager_image is None:
                    eager_image = image
                    row["max_abs_diff_vs_diffusers"] = float((image.float() - run_reference().float()).abs().max())
                else:
                    row["max_abs_diff_vs_eager"] = float((image.float() - eager_image.float()).abs().max())
                    # As the PNGs would be compared: 8-bit pixels, llm-dit's PSNR and SSIM.
                    ours8, eager8 = to_pil(image[0]), to_pil(eager_image[0])
                    row["psnr_vs_eager_db"] = pixel.psnr(ours8, eager8)
                    row["ssim_vs_eager"] = pixel.ssim(ours8, eager8)
                run_ours(pipe, args.batch)
                row["s_per_image_batched"] = timed(lambda pipe=pipe: run_ours(pipe, args.batch), 2)[0] / args.batch
                row["speed_vs_diffusers"] = e2e["diffusers"]["s_per_image"] / seconds
                row["speed_vs_diffusers_batched"] = e2e["diffusers"]["s_per_image_batched"] / row["s_per_image_batched"]
                e2e[name] = row
                print(name, json.dumps(row), flush=True)
                del pipe
                if transformer is not pristine:
                    del transformer
                if on_gpu:
                    torch.cuda.empty_cache()
            results["e2e"] = e2e

        if "forward" in sections or "fp8probe" in sections:
            pipe = ours_with(pristine)
            caption = pipe.encoder.encode(PROMPT)[0].embeddings
            latent = size // 8
            x = [torch.randn(16, 1, latent, latent, device=device, dtype=dtype)]
            t = torch.tensor([0.5], device=device, dtype=dtype)

            def forward(model: torch.nn.Module):
                return model(x, t, [caption.to(dtype)], return_dict=False)[0]

        if "forward" in sections:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with counter:
                forward(pristine)
            flops = counter.get_total_flops()
            rows: dict[str, Any] = {"caption_tokens": int(caption.shape[0]), "tflop": flops / 1e12}
            variants = [("eager", {}), (fast_backend, {"attention_backend": fast_backend})]
            variants += [
                (f"regional compile + {fast_backend}", {"compile": "regional", "attention_backend": fast_backend})
            ]
            if on_gpu:
                variants += [
                    (f"fp8 {m} + regional compile + {fast_backend}",
                     {"compile": "regional", "attention_backend": fast_backend, "fp8": m})
                    for m in args.fp8.split(",") if m
                ]  # fmt: skip
            for name, settings in variants:
                model = pristine if not settings else copy.deepcopy(pristine)
                try:
                    accelerate(model, PipelineSettings(**{"compile": "none", "attention_backend": "native",
                                                          "compile_backend": compile_backend, **settings}))  # fmt: skip
                    sync()
                    t0 = time.perf_counter()
                    out = forward(model)
                    sync()
                    first_s = time.perf_counter() - t0
                    seconds = timed(lambda model=model: forward(model), max(3, args.runs))[0]
                    rows[name] = {"s": seconds, "tflops": flops / seconds / 1e12, "first_call_s": first_s,
                                  "finite": bool(torch.isfinite(out).all())}  # fmt: skip
                except Exception as exc:
                    rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
                print(name, json.dumps(rows[name]), flush=True)
                if model is not pristine:
                    del model
                if on_gpu:
                    torch.cuda.empty_cache()
            results["forward"] = rows

        if "fp8probe" in sections and on_gpu:
            from llm_dit.generation.acceleration import block_linears, quantize_fp8

            probe: dict[str, Any] = {}
            for mode in ("rowwise", "tensorwise"):
                model = copy.deepcopy(pristine)
                quantize_fp8(model, mode)
                names = set(block_linears(model))
                found: list[dict[str, Any]] = []

                def hook(
                    module: torch.nn.Module, inputs: tuple, output: torch.Tensor, name: str = "", found: list = found
                ) -> None:
                    if found or torch.isfinite(output).all():
                        return
                    x_in = inputs[0].detach().float()
                    flat = x_in.reshape(-1, x_in.shape[-1])
                    found.append({
                        "module": name, "input_shape": list(x_in.shape),
                        "input_finite": bool(torch.isfinite(x_in).all()), "input_max_abs": float(flat.abs().max()),
                        "zero_rows": int((flat.abs().amax(dim=1) == 0).sum()), "rows": int(flat.shape[0]),
                        "output_nonfinite": int((~torch.isfinite(output)).sum()),
                    })  # fmt: skip

                handles = [
                    m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n))
                    for n, m in model.named_modules()
                    if n in names
                ]
                out = forward(model)
                for h in handles:
                    h.remove()
                probe[mode] = {"finite": bool(torch.isfinite(out).all()), "first_nonfinite": found[:1]}
                print("fp8probe", mode, json.dumps(probe[mode]), flush=True)
                del model
                torch.cuda.empty_cache()
            results["fp8probe"] = probe

        if "sweep" in sections:
            shapes = [
                (size, size),
                (size * 3 // 4, size * 5 // 4 // 16 * 16),
                (size * 5 // 4 // 16 * 16, size * 3 // 4),
            ]
            lengths = [20, 100, 300, 600]
            work = [(w, h, words(n)) for w, h in shapes for n in lengths]
            sync()
            t0 = time.perf_counter()
            for w, h, prompt in work:
                run_reference(1, prompt, w, h)
            sync()
            reference_s = time.perf_counter() - t0
            fast = ours_with(
                copy.deepcopy(pristine), compile="regional", compile_backend=compile_backend,
                attention_backend=fast_backend,
            )  # fmt: skip
            sync()
            t0 = time.perf_counter()
            run_ours(fast, 1, work[0][2], work[0][0], work[0][1])  # first call: compile
            sync()
            compile_s = time.perf_counter() - t0
            warm_start = time.perf_counter()
            for w, h, prompt in work[:2] + work[4:5]:  # warm-up: a second length and a second shape
                run_ours(fast, 1, prompt, w, h)
            sync()
            warm_s = time.perf_counter() - warm_start
            counts = recompile_counts()
            t0 = time.perf_counter()
            for w, h, prompt in work:
                run_ours(fast, 1, prompt, w, h)
            sync()
            ours_s = time.perf_counter() - t0
            after = recompile_counts()
            results["sweep"] = {
                "images": len(work), "shapes": shapes, "caption_tokens": lengths,
                "diffusers_images_per_hour": 3600 * len(work) / reference_s,
                "llm_dit_images_per_hour": 3600 * len(work) / ours_s,
                "ratio": reference_s / ours_s, "first_call_s": compile_s, "warm_up_s": warm_s,
                "graphs_after_warm_up": counts, "graphs_after_sweep": after,
            }  # fmt: skip
            print("sweep", json.dumps(results["sweep"]), flush=True)

    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

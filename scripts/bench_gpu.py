"""Speed and memory of applied plans on one GPU, at SDXL and FLUX size (random weights), in one run.

For each model (``mpsearch.apps.testing.real_size_pipeline``: the real-size denoiser, built on the GPU in bfloat16,
around small text encoders and VAE), one denoiser call at 1024 px (SDXL: 128x128 latents, CFG batch 2, 77
tokens; FLUX.1-dev: 4096 image tokens, 512 text tokens, batch 1), timed for bf16 and for the plans uniform
int8 / int4 / nvfp4 and a solved plan, each applied to the same model in turn (``apply_plan``, full-precision
weights stashed in host memory, then removed). The solved plan: the greedy solver under ``--budget`` (35% of
the bf16 bytes) on a *synthetic* profile (per-layer lognormal sensitivities, seed 0, times per-format error
factors int8 1, nvfp4 12, int4 20, as in ``bench_solver.py``): a realistic mix of formats, not a measured one.
It is also exported (``mpsearch.export``) and loaded back (``mpsearch.load_pipeline(folder, device="cuda")``)
with the full-precision model gone: load time, load peak and the loaded denoiser's call.

Per plan: median time per call (after a warm-up call that also builds the kernels' device layouts), ratio to
bf16, the plan's bytes (predicted == measured), ``torch.cuda.memory_allocated`` at rest (plan bytes + cached
device layouts + inputs), the cached layouts' bytes, peak ``torch.cuda.max_memory_allocated`` during the
calls, and the output's relative MSE against bf16. Which kernel each format ran is printed (int8:
``torch._int_mm``; int4: tinygemm; nvfp4: ``torch._scaled_mm`` on compute capability 10.x, else the
reference W4A4 emulation on the device). Sections that would pass ``--limit`` seconds are skipped and say so.

    python scripts/bench_gpu.py [--models sdxl,flux-dev] [--rounds 3] [--budget 35%] [--limit 540]
    python scripts/bench_gpu.py --dry-run   # tiny models on the CPU in seconds: the script's logic only

Writes docs/bench_gpu_results.json and the ``bench_gpu`` section of docs/benchmarks.md (not with --dry-run).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchdoc import write_section

from mpsearch.allocation.solvers import Problem, get_solver
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.apps.testing import build_tiny_pipeline, real_size_pipeline
from mpsearch.models import describe, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.checkpoint import export
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.kernels import cuda as cuda_kernels

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "docs" / "bench_gpu_results.json"
FORMATS = ("fp", "int8", "nvfp4", "int4")
FACTOR = {"fp": 0.0, "int8": 1.0, "nvfp4": 12.0, "int4": 20.0}
#: model -> (tiny pipeline for --dry-run, latent size (real, tiny), text tokens (real, tiny))
MODELS = {"sdxl": ("sdxl", (128, 8), (77, 8)), "flux-dev": ("flux", (128, 8), (512, 8))}


def denoiser_inputs(den, latent: int, tokens: int, dtype, device) -> dict:
    """Keyword inputs of one denoiser call (random, seeded)."""
    cfg = den.config
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype=dtype, device=device)

    if "joint_attention_dim" in cfg:  # FLUX: 2x2-packed latents, batch 1 (guidance-distilled)
        n = (latent // 2) ** 2
        kw = dict(hidden_states=r(1, n, cfg.in_channels), encoder_hidden_states=r(1, tokens, cfg.joint_attention_dim),
                  pooled_projections=r(1, cfg.pooled_projection_dim),
                  timestep=torch.full((1,), 0.5, dtype=dtype, device=device),
                  img_ids=torch.zeros(n, 3, dtype=dtype, device=device),
                  txt_ids=torch.zeros(tokens, 3, dtype=dtype, device=device))
        if cfg.guidance_embeds:
            kw["guidance"] = torch.full((1,), 3.5, dtype=dtype, device=device)
        return kw
    text = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim  # SDXL UNet, CFG batch 2
    return dict(sample=r(2, cfg.in_channels, latent, latent), timestep=torch.tensor(500, device=device),
                encoder_hidden_states=r(2, tokens, cfg.cross_attention_dim),
                added_cond_kwargs={"text_embeds": r(2, text), "time_ids": r(2, 6)})


def call(den, inputs):
    with torch.inference_mode():
        return den(**inputs, return_dict=False)[0]


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def solved_plan(info, fraction: float, seed: int = 0) -> Plan:
    """The greedy solver's plan under ``fraction`` of the full-precision bytes, on synthetic sensitivities."""
    rng = np.random.default_rng(seed)
    layers = info.layers
    sens = rng.lognormal(0.0, 1.5, size=len(layers))
    cost = np.full((len(layers), len(FORMATS)), np.inf)
    nbytes = np.zeros((len(layers), len(FORMATS)), dtype=np.int64)
    for i, layer in enumerate(layers):
        for j, f in enumerate(FORMATS):
            if f == "fp" or f in layer.eligible:
                cost[i, j] = sens[i] * FACTOR[f]
                nbytes[i, j] = layer.nbytes(f)
    index = {layer.name: i for i, layer in enumerate(layers)}
    groups = tuple(tuple(index[n] for n in g) for g in info.tie_groups if len(g) > 1)
    fp_total = info.fixed_bytes + int(nbytes[:, 0].sum())
    problem = Problem(layer_names=tuple(info.names), formats=FORMATS, cost=cost, nbytes=nbytes,
                      fixed_bytes=info.fixed_bytes, budget_bytes=int(fraction * fp_total), groups=groups)
    sol = get_solver("greedy").solve(problem)
    assignment = {name: FORMATS[c] for name, c in zip(info.names, sol.choice, strict=True)}
    return Plan.from_assignment(info, assignment, provenance={
        "solver": "greedy", "profile": f"synthetic: lognormal(0, 1.5) per layer, seed {seed}, x {FACTOR}"})


def layout_bytes(den) -> int:
    return sum(m._kernel_cache.nbytes for m in den.modules() if hasattr(m, "_kernel_cache"))


def measure(den, inputs, rounds: int, device, ref=None) -> dict:
    """Warm-up call (builds device layouts), then ``rounds`` timed calls; memory at rest and at peak."""
    out = call(den, inputs)
    sync(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    rest = torch.cuda.memory_allocated() if cuda else None
    times = []
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        call(den, inputs)
        sync(device)
        times.append(time.perf_counter() - t0)
    rel = None
    if ref is not None:
        rel = float(((out.float() - ref.float()) ** 2).mean() / (ref.float() ** 2).mean().clamp_min(1e-30))
    return {"seconds": statistics.median(times), "times": times, "rest_bytes": rest,
            "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
            "layout_bytes": layout_bytes(den), "denoiser_bytes": measured_bytes(den), "rel_mse": rel}


def kernel_paths(device) -> dict:
    """Which kernel each format runs on ``device`` for 16-bit activations (bf16: tinygemm takes only bf16)."""
    if torch.device(device).type != "cuda":
        return {"int8": "reference (CPU)", "int4": "reference (CPU)", "nvfp4": "reference (CPU)"}
    return {"int8": "torch._int_mm (W8A8)", "int4": "tinygemm torch._weight_int4pack_mm (W4A16)",
            "nvfp4": ("torch._scaled_mm float4_e2m1fn_x2 (W4A4)" if cuda_kernels.nvfp4_supported(device)
                      else "reference on the device: W4A4 emulated (fake-quantized activations, dequantized "
                           "weight, bf16 GEMM)")}


def bench_model(name: str, args, device, dtype, clock) -> dict:
    tiny, latents, tokens = MODELS[name]
    k = 1 if args.dry_run else 0
    latent, ntok = latents[k], tokens[k]
    t0 = time.perf_counter()
    if args.dry_run:
        pipe = build_tiny_pipeline(tiny)
    else:
        pipe = real_size_pipeline(name, dtype=dtype, device=device)
    den = pipe.transformer if hasattr(pipe, "transformer") and pipe.transformer is not None else pipe.unet
    den.to(device=device, dtype=dtype)
    info = describe(den)
    inputs = denoiser_inputs(den, latent, ntok, dtype, device)
    res = {"model": name, "build_seconds": time.perf_counter() - t0, "plans": {}, "fp_bytes": measured_bytes(den)}
    fp = measure(den, inputs, args.rounds, device)
    ref = call(den, inputs)
    fp["plan_bytes"] = measured_bytes(den)
    res["plans"][str(dtype).replace("torch.", "")] = fp
    plans = {f"uniform {f}": Plan.uniform(info, f) for f in ("int8", "int4", "nvfp4")}
    fraction = float(args.budget.rstrip("%")) / 100
    solved = None
    try:
        solved = plans[f"solved {args.budget}"] = solved_plan(info, fraction)
    except Exception as e:  # an infeasible budget: say so, bench the rest
        res["plans"][f"solved {args.budget}"] = {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0]}"}
    counts = {}
    for f in (solved.layers.values() if solved is not None else ()):
        counts[f] = counts.get(f, 0) + 1
    res["solved_formats"] = counts
    for label, plan in plans.items():
        if clock() > args.limit:
            res["plans"][label] = {"skipped": f"time limit {args.limit} s"}
            continue
        t1 = time.perf_counter()
        handle = apply_plan(den, plan, stash="memory", ignore_weights=True)
        try:
            m = measure(den, inputs, args.rounds, device, ref)
        finally:
            handle.remove()
        m.update(plan_bytes=plan.predicted_bytes, apply_seconds=time.perf_counter() - t1)
        res["plans"][label] = m
        print(f"{name} {label}: {m['seconds'] * 1e3:.1f} ms/call, bytes {m['denoiser_bytes']:,} "
              f"(plan {m['plan_bytes']:,}), peak {m['peak_bytes']}", flush=True)
    if clock() > args.limit or solved is None:
        res["loaded"] = {"skipped": f"time limit {args.limit} s" if solved is not None else "no solved plan"}
        return res
    with tempfile.TemporaryDirectory(prefix="mpsearch-bench-gpu-", dir=args.tmp) as tmp:
        t1 = time.perf_counter()
        folder = export(pipe, solved, Path(tmp) / "q", ignore_weights=True)
        export_s = time.perf_counter() - t1
        del pipe, den
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t1 = time.perf_counter()
        loaded = load_pipeline(folder, device=device)
        sync(device)
        load_s = time.perf_counter() - t1
        load_peak = torch.cuda.max_memory_allocated() if torch.device(device).type == "cuda" else None
        lden = loaded.transformer if getattr(loaded, "transformer", None) is not None else loaded.unet
        m = measure(lden, inputs, args.rounds, device, ref)
        m.update(plan_bytes=solved.predicted_bytes, export_seconds=export_s, load_seconds=load_s,
                 load_peak_bytes=load_peak)
        res["loaded"] = m
        del loaded, lden
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    return res


def _gb(b):
    if b is None:
        return "-"
    return f"{b / 1e9:.2f} GB" if b >= 1e8 else f"{b / 1e6:.3f} MB"


def table(results: list[dict], base: str) -> str:
    lines = ["| model | plan | time per call | vs " + base + " | plan bytes (= measured) | at rest | device layouts "
             "| peak during calls | output rel. MSE vs " + base + " |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        fp = r["plans"][base]
        rows = list(r["plans"].items()) + ([("solved, exported + loaded", r["loaded"])] if "loaded" in r else [])
        for label, m in rows:
            if "skipped" in m:
                lines.append(f"| {r['model']} | {label} | skipped: {m['skipped']} | | | | | | |")
                continue
            same = "yes" if m["plan_bytes"] == m["denoiser_bytes"] else "NO"
            mse = "-" if m["rel_mse"] is None else f"{m['rel_mse']:.3g}"
            lines.append(f"| {r['model']} | {label} | {m['seconds'] * 1e3:.1f} ms | "
                         f"{m['seconds'] / fp['seconds']:.2f}x | "
                         f"{_gb(m['plan_bytes'])} ({same}) | {_gb(m['rest_bytes'])} | {_gb(m['layout_bytes'])} | "
                         f"{_gb(m['peak_bytes'])} | {mse} |")
        if "loaded" in r and "load_seconds" in r["loaded"]:
            lo = r["loaded"]
            lines.append(f"| {r['model']} | (load of the exported folder) | {lo['load_seconds']:.1f} s | | | | | "
                         f"{_gb(lo['load_peak_bytes'])} | |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sdxl,flux-dev")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", default="35%", help="the solved plan's budget, a percentage of the bf16 bytes")
    ap.add_argument("--limit", type=float, default=540.0, help="seconds after which remaining sections are skipped")
    ap.add_argument("--dry-run", action="store_true", help="tiny models on the CPU (float32): the logic, no figures")
    ap.add_argument("--out", default=None, help=f"results JSON (default {RESULTS.relative_to(ROOT)}; a temp file "
                                                "with --dry-run)")
    ap.add_argument("--tmp", default=None, help="folder for the exported checkpoints (default: the system's)")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    start = time.perf_counter()

    def clock():
        return time.perf_counter() - start

    if args.dry_run:
        device, dtype = "cpu", torch.float32
    else:
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu.py needs a CUDA device (or --dry-run for the CPU logic check)")
        device, dtype = "cuda", torch.bfloat16
    base = str(dtype).replace("torch.", "")
    machine = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)",
               "capability": list(torch.cuda.get_device_capability()) if device == "cuda" else None,
               "torch": torch.__version__, "kernels": kernel_paths(device)}
    print(json.dumps(machine), flush=True)
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if clock() > args.limit:
            results.append({"model": name, "plans": {}, "skipped": f"time limit {args.limit} s"})
            continue
        results.append(bench_model(name, args, device, dtype, clock))
    unsupported = sorted(f"{n} on {d}" for n, d in cuda_kernels._UNSUPPORTED)
    report = {"machine": machine, "results": results, "kernels_given_up": unsupported, "seconds": clock(),
              "dry_run": args.dry_run}
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "bench_gpu_dry_run.json" if args.dry_run
                                           else RESULTS)
    out.write_text(json.dumps(report, indent=1))
    body = (f"Device: {machine['device']} (compute capability {machine['capability']}), torch {machine['torch']}. "
            f"Kernels: " + "; ".join(f"{k}: {v}" for k, v in machine["kernels"].items()) + ". "
            + (f"Kernels that failed and fell back to the reference: {', '.join(unsupported)}. " if unsupported else "")
            + f"One denoiser call at 1024 px ({base}; SDXL: CFG batch 2, 77 tokens; FLUX.1-dev: 4096 image + 512 "
            f"text tokens), median of {args.rounds} calls after a warm-up; the solved plan is greedy under "
            f"{args.budget} on a synthetic profile (see the script). 'at rest': torch.cuda.memory_allocated after "
            f"the warm-up (plan bytes + cached device layouts + inputs); 'peak': max_memory_allocated during the "
            f"calls. Whole run: {clock():.0f} s.\n\n" + table([r for r in results if r.get("plans")], base))
    print(body)
    if not args.dry_run and not args.no_doc:
        write_section("bench_gpu", "GPU: speed and memory of applied plans at SDXL and FLUX size", body,
                      f"python scripts/bench_gpu.py --models {args.models} --rounds {args.rounds} "
                      f"--budget {args.budget}")
    return report


if __name__ == "__main__":
    main()

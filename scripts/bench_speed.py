"""Speed of applied plans on a CPU at real size: one SD1.5 UNet call (32x32 latents, CFG batch 2).

Builds the real-size SD1.5 pipeline once (random weights, fp32), makes one copy of the UNet per plan (fp32,
uniform int8 / int4 / nvfp4, and the role-based plan for 35% of fp from ``plan_without_weights``, which
needs no profile) and times one UNet call on the same inputs, the plans interleaved round by round (the
median over rounds; each ratio is to fp32 timed in the same rounds). Also: the denoiser's bytes (measured
== predicted) and the image MSE against fp32 on a fixed prompt and seed.

    python scripts/bench_speed.py [--rounds 5] [--threads 2] [--steps 4] [--profile] [--compile]

``--compile`` adds a row per plan run through the optional compiled CPU kernels
(``mpsearch.runtime.kernels.cpu.compiled``: bit for bit the same output, fused loops).

``--profile`` prints where the time of one call goes (torch.profiler, by op) for each plan instead.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import time

import torch
from benchdoc import cpu_model, write_section

from mpsearch.apps.testing import real_size_pipeline
from mpsearch.archs import plan_without_weights
from mpsearch.models import describe, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.kernels import using_kernels
from mpsearch.runtime.kernels.cpu.compiled import compiled_cpu_kernels
from mpsearch.runtime.kernels.cpu.int8 import int_mm_is_faster
from mpsearch.runtime.kernels.cpu.loops import jit_enabled
from mpsearch.runtime.kernels.cpu.nvfp4 import bf16_is_faster
from mpsearch.runtime.kernels.cpu.workspace import workspace_bytes

PROMPT = "a photograph of an astronaut riding a horse"
SEED = 1234


def unet_inputs(unet):
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 32, 32, generator=g)
    ehs = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    return latents, torch.tensor(500), ehs


def call(unet, inputs):
    with torch.inference_mode():
        return unet(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]


def image(pipe, unet, steps):
    pipe.unet = unet
    with torch.inference_mode():
        out = pipe(PROMPT, height=64, width=64, num_inference_steps=steps, guidance_scale=7.5,
                   generator=torch.Generator().manual_seed(SEED), output_type="np")
    return torch.as_tensor(out.images)


def build_plans(unet):
    info = describe(unet)
    r = plan_without_weights("sd15", "35%")
    plans = {f"uniform {f}": Plan.uniform(info, f) for f in ("int8", "int4", "nvfp4")}
    counts = ", ".join(f"{n} {f}" for f, n in sorted(r["role_plan"]["formats"].items()))
    plans[f"35% plan ({counts})"] = Plan.from_assignment(info, r["assignment"], provenance={"solver": "role-ladder"})
    return plans


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4, help="denoising steps of the image (MSE vs fp)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated plan names to keep (substring match)")
    ap.add_argument("--compile", action="store_true", help="also time the plans with compiled CPU kernels")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = real_size_pipeline("sd15")
    fp_unet = pipe.unet
    inputs = unet_inputs(fp_unet)
    models = {"fp32": fp_unet}
    plans = build_plans(fp_unet)
    if args.only:
        keep = args.only.split(",")
        plans = {k: v for k, v in plans.items() if any(s in k for s in keep)}
    nbytes = {"fp32": (measured_bytes(fp_unet), measured_bytes(fp_unet))}
    for name, plan in plans.items():
        m = copy.deepcopy(fp_unet)
        apply_plan(m, plan, stash="disk", ignore_weights=True)
        models[name] = m
        nbytes[name] = (plan.predicted_bytes, measured_bytes(m))
    compiled = set()
    if args.compile:
        for name in list(plans):
            models[f"{name}, compiled"] = models[name]
            nbytes[f"{name}, compiled"] = nbytes[name]
            compiled.add(f"{name}, compiled")

    float_int8 = [n for n in plans if "int8" in n and "uniform" in n]
    for name in float_int8:  # the same model through the reference path: the exact product on the float GEMM
        models[f"{name}, float GEMM path"] = models[name]
        nbytes[f"{name}, float GEMM path"] = nbytes[name]
    for name in [n for n in plans if "nvfp4" in n and "uniform" in n]:  # bit for bit, float32 GEMM
        models[f"{name}, float32 path"] = models[name]
        nbytes[f"{name}, float32 path"] = nbytes[name]
    for name in [n for n in plans if ("nvfp4" in n or "int4" in n) and "uniform" in n]:  # without numba's loops
        models[f"{name}, torch loops"] = models[name]
        nbytes[f"{name}, torch loops"] = nbytes[name]

    @contextlib.contextmanager
    def kernels(name):
        spec = ",".join(["jit=off" if name.endswith("torch loops") else "jit=on"]
                        + (["int8=float"] if name.endswith("float GEMM path") else [])
                        + (["nvfp4=float"] if name.endswith("float32 path") else []))
        with using_kernels(spec), (compiled_cpu_kernels() if name in compiled else contextlib.nullcontext()):
            yield

    for name, m in models.items():  # warm-up (and compilation)
        with kernels(name):
            call(m, inputs)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name, m in models.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof, kernels(name):
                call(m, inputs)
            print(f"=== {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        return
    times = {k: [] for k in models}
    for r in range(args.rounds):
        for name, m in models.items():
            with kernels(name):
                t0 = time.perf_counter()
                call(m, inputs)
                times[name].append(time.perf_counter() - t0)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    ref = image(pipe, fp_unet, args.steps)
    fp_out = call(fp_unet, inputs)
    lines = ["| plan | bytes (measured) | = predicted | time per call | vs fp32 (median of per-round ratios) | "
             "UNet output MSE vs fp32 | image MSE vs fp32 |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for name, m in models.items():
        ratios = [t / f for t, f in zip(times[name], times["fp32"], strict=True)]
        with kernels(name):
            mse_img = float(((image(pipe, m, args.steps) - ref) ** 2).mean()) if name != "fp32" else 0.0
            mse_out = float(((call(m, inputs) - fp_out) ** 2).mean())
        pred, meas = nbytes[name]
        lines.append(f"| {name} | {meas:,} | {'yes' if pred == meas else 'NO'} | "
                     f"{statistics.median(times[name]):.2f} s | {statistics.median(ratios):.2f}x | "
                     f"{mse_out:.3g} | {mse_img:.3g} |")
        print(lines[-1], flush=True)
    pipe.unet = fp_unet
    body = (f"One UNet call of the real-size SD1.5 pipeline (`mpsearch.apps.testing.real_size_pipeline(\"sd15\")`, "
            f"random weights, fp32): 32x32 latents, CFG batch 2, 77 text tokens; torch threads = {args.threads}; "
            f"{args.rounds} rounds, every plan timed once per round, interleaved; the ratio is the median of "
            f"the per-round ratios to fp32. Image: `{PROMPT}`, seed {SEED}, 64 px, {args.steps} DDIM steps, "
            f"guidance 7.5, pixels in [0, 1]. CPU: {cpu_model()} (torch capability "
            f"{torch.backends.cpu.get_cpu_capability()}). INT8 is W8A8 with its exact integer product "
            f"on `torch._int_mm` where that is measured faster than the float GEMM (here: "
            f"{'yes' if int_mm_is_faster() else 'no'}; `mpsearch.runtime.kernels.cpu.int8`), else on the CPU's "
            "float GEMM in slices of at most 1040 inputs; the `float GEMM path` row runs the same model through "
            "the latter (both bit for bit the same numbers). NVFP4 is W4A4: where the bfloat16 GEMM is measured faster "
            f"than the float32 one (here: {'yes' if bf16_is_faster() else 'no'}; `mpsearch.runtime.kernels.cpu.nvfp4`) "
            "it runs NVFP4 hardware's arithmetic (element x block-scale values exact in bfloat16, float32 sums "
            "rounded to bfloat16, then the tensor scales: within 2^-8 of the reference), else, and in the "
            "`float32 path` row, the reference emulated in float32 bit for bit; INT4 is weight-only (decoded per "
            "call). The 4-bit weights are decoded per call, and the NVFP4 activations quantized (a conv's patches "
            "read straight from its input, no im2col copy), by one native loop each (`mpsearch.runtime.kernels."
            f"cpu.loops`, compiled by numba: {'on' if jit_enabled() else 'OFF'}), bit for bit the torch kernels "
            "the `torch loops` rows run instead (one pass over memory per step, a block of rows at a time), into "
            f"a reused per-thread workspace ({workspace_bytes() / 1e6:.0f} MB after the run: about the largest "
            "layer's decoded weight and activations). `compiled` rows run the "
            "same plan through the optional compiled CPU kernels (`mpsearch.compiled_cpu_kernels()`, torch.compile: "
            "the same arithmetic bit for bit in fused loops; compilation excluded from the times; where numba's loops "
            "run, the 4-bit formats take those instead, so only INT8's loops differ). The 35% plan is "
            "the role-based plan `mpsearch plan --arch sd15 --budget 35%` prints (no profile). Ratios, not "
            "seconds, are the result.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_doc:
        write_section("bench_speed", "Speed of applied plans on a CPU at real size (SD1.5)", body,
                      f"python scripts/bench_speed.py --rounds {args.rounds} --threads {args.threads} "
                      f"--steps {args.steps}" + (" --compile" if args.compile else ""))


if __name__ == "__main__":
    main()

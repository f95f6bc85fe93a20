"""Executor on the default models: uniform INT8 / INT4 / NVFP4 plans.

For each: predicted vs measured denoiser bytes, bit-for-bit restore after remove(), image PSNR/SSIM against
full precision (held-out seeds), and CPU time of a 20-step generation as a ratio to full precision, run
side by side in one process (median of --repeat runs each).

    python scripts/bench_executor.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from benchdoc import write_section

from mpsearch.apps.evaluate import HELD_OUT_SEEDS, image_scores
from mpsearch.apps.pipeline import load_pipeline
from mpsearch.models import get_denoiser, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate_many

LABELS = tuple(range(10))


def timed(pipe, repeat):
    times, images = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        images = generate_many(pipe, LABELS, HELD_OUT_SEEDS, 20)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), images


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    lines = ["| model | plan | predicted bytes | measured bytes | equal | restored bit for bit | PSNR | SSIM | "
             "CPU time vs fp |", "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: |"]
    for model in ("default", "default-unet"):
        pipe = load_pipeline(model)
        den = get_denoiser(pipe)
        state = {k: v.clone() for k, v in den.state_dict().items()}
        generate_many(pipe, LABELS, HELD_OUT_SEEDS[:1], 2)  # warm-up
        t_fp, ref = timed(pipe, args.repeat)
        lines.append(f"| {model} | fp | {measured_bytes(pipe):,} | {measured_bytes(pipe):,} | yes | - | - | - | "
                     f"1.00 ({t_fp:.2f} s) |")
        for fmt in ("int8", "nvfp4", "int4"):
            plan = Plan.uniform(pipe, fmt)
            handle = apply_plan(pipe, plan)
            nbytes = measured_bytes(pipe)
            t, images = timed(pipe, args.repeat)
            handle.remove()
            now = den.state_dict()
            exact = set(now) == set(state) and all(torch.equal(now[k], v) for k, v in state.items())
            s = image_scores(ref, images)
            lines.append(f"| {model} | uniform {fmt} | {plan.predicted_bytes:,} | {nbytes:,} | "
                         f"{'yes' if nbytes == plan.predicted_bytes else 'NO'} | {'yes' if exact else 'NO'} | "
                         f"{s['psnr']:.2f} dB | {s['ssim']:.4f} | {t / t_fp:.2f} |")
            print(lines[-1], flush=True)
    body = (f"20-step generations of labels 0-9 x seeds {list(HELD_OUT_SEEDS)} (held out from profiling), "
            "median of the repeats; PSNR/SSIM against the full-precision images of the same seeds. INT8 is "
            "W8A8 through `torch._int_mm`, NVFP4 is W4A4 emulated in float32 (so slower than fp on a CPU: it "
            "exists for the memory and for fidelity, not CPU speed), INT4 is weight-only and dequantizes per "
            "call. Layers a format cannot take stay in fp.\n\n" + "\n".join(lines))
    print(body)
    write_section("bench_executor", "Executor: uniform plans on the default models", body,
                  f"python scripts/bench_executor.py --repeat {args.repeat}")


if __name__ == "__main__":
    main()

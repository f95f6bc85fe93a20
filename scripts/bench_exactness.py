"""Whether the CPU kernels compute the formats' reference numbers at real size: one SD1.5 UNet call (the
published config, random weights, 32x32 latents, CFG batch 2) per uniform plan, through the kernels and through
``mpsearch.runtime.kernels.reference_only()``; for NVFP4 also through its bfloat16 path, which is not bit for bit.
Each path also runs with numba's loops off (``using_kernels("jit=off")``): the torch loops they replace.

    python scripts/bench_exactness.py [--threads 2] [--no-doc]
"""

from __future__ import annotations

import argparse
import copy

import torch
from benchdoc import write_section

from mpsearch.apps.testing import real_size_pipeline
from mpsearch.models import describe
from mpsearch.plan import Plan
from mpsearch.runtime import kernels
from mpsearch.runtime.executor import apply_plan


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    unet = real_size_pipeline("sd15").unet
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(2, 4, 32, 32, generator=g), torch.tensor(500), torch.randn(2, 77, 768, generator=g))

    def call(m):
        with torch.inference_mode():
            return m(inputs[0], inputs[1], encoder_hidden_states=inputs[2], return_dict=False)[0]

    fp = call(unet)
    mse = lambda a: float(((a - fp) ** 2).mean())  # noqa: E731
    lines = ["| plan | path | output == reference, bit for bit | max abs diff / max abs reference | "
             "output MSE vs fp32 (reference's) | numba loops == torch loops, bit for bit |",
             "| --- | --- | --- | ---: | ---: | --- |"]
    for fmt in ("int8", "int4", "nvfp4"):
        m = copy.deepcopy(unet)
        apply_plan(m, Plan.uniform(describe(unet), fmt), stash="disk", ignore_weights=True)
        with kernels.reference_only():
            ref = call(m)
        paths = [("CPU kernels (bit-for-bit paths)", "float")] + ([("bfloat16 GEMM", "bf16")] if fmt == "nvfp4" else [])
        for label, path in paths:
            with kernels.using_kernels(f"nvfp4={path}"):
                out = call(m)
                with kernels.using_kernels("jit=off"):
                    torch_loops = call(m)
            rel = float((out - ref).abs().max() / ref.abs().max())
            lines.append(f"| uniform {fmt} | {label} | {'yes' if torch.equal(out, ref) else 'no'} | {rel:.3g} | "
                         f"{mse(out):.4g} ({mse(ref):.4g}) | {'yes' if torch.equal(out, torch_loops) else 'no'} |")
            print(lines[-1], flush=True)
        del m
    body = ("One SD1.5 UNet call at real size (`real_size_pipeline(\"sd15\")`, random weights, fp32, 32x32 latents, "
            "CFG batch 2) per uniform plan, through the CPU kernels and through the formats' reference "
            "(`mpsearch.runtime.kernels.reference_only()`); each path also with numba's loops "
            "(`mpsearch.runtime.kernels.cpu.loops`) off, the torch loops they replace.\n\n" + "\n".join(lines))
    print(body)
    if not args.no_doc:
        write_section("exactness", "CPU kernels against the reference at real size (SD1.5)", body,
                      f"python scripts/bench_exactness.py --threads {args.threads}")


if __name__ == "__main__":
    main()

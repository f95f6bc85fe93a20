"""Quantized checkpoints at SD1.5 size: peak host memory of loading a plan.

The SD1.5 UNet (``mpsearch/archs/sd15.json``, 859.5M parameters, float32, random weights) in a pipeline whose
other components are the tiny ones of ``mpsearch.apps.testing`` (so the denoiser is what is measured). For each
uniform plan, each in a fresh process, peak RSS (``getrusage`` maxrss) of

* (a) ``load_pipeline(fp folder)`` + ``apply_plan``: today's path (the fp model, then its packed copy);
* (b) ``load_pipeline(exported folder)``: the packed denoiser read straight from ``mpsearch.export``'s folder;

beside a process that only imports and loads the small components (the constant every process pays).

    python scripts/bench_export.py [--formats int8,nvfp4] [--workdir DIR]

Needs about 10 GB of RAM and 6 GB of disk for a few minutes; prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchdoc import write_section
from tqdm import tqdm


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child_build(workdir: Path, formats: list[str]) -> dict:
    """The fp pipeline folder with a real-size random SD1.5 UNet, and one uniform plan per format."""
    import torch

    from mpsearch.apps.testing import tiny_sd15
    from mpsearch.archs import build_meta_denoiser
    from mpsearch.models import describe
    from mpsearch.plan import Plan

    unet = build_meta_denoiser("sd15", "float32").to_empty(device="cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    info = describe(unet)
    for fmt in formats:
        Plan.uniform(info, fmt).save(workdir / f"{fmt}.yaml")
    pipe = tiny_sd15()
    pipe.register_modules(unet=unet)
    pipe.save_pretrained(workdir / "fp", safe_serialization=True)
    return {"params": sum(p.numel() for p in unet.parameters()), "fp_bytes": info.fp_bytes}


def child_base(workdir: Path) -> dict:
    """Imports and the small components only: the constant cost of any process."""
    import mpsearch  # noqa: F401
    from mpsearch.apps.testing import tiny_sd15
    from mpsearch.runtime import checkpoint  # noqa: F401

    tiny_sd15()
    return {"peak": _peak_bytes()}


def child_apply(workdir: Path, fmt: str) -> dict:
    """(a) fp load + apply_plan; then, after its peak is read, the export of the same plan."""
    from mpsearch.apps.pipeline import load_pipeline
    from mpsearch.models import measured_bytes
    from mpsearch.plan import Plan
    from mpsearch.runtime.checkpoint import export
    from mpsearch.runtime.executor import apply_plan

    plan = Plan.load(workdir / f"{fmt}.yaml")
    t0 = time.perf_counter()
    pipe = load_pipeline(workdir / "fp")
    t1 = time.perf_counter()
    handle = apply_plan(pipe, plan)
    t2 = time.perf_counter()
    out = {"peak": _peak_bytes(), "load_s": t1 - t0, "apply_s": t2 - t1, "bytes": measured_bytes(pipe)}
    handle.remove()
    t3 = time.perf_counter()
    export(pipe, plan, workdir / f"q-{fmt}")
    out["export_s"] = time.perf_counter() - t3
    return out


def child_load(workdir: Path, fmt: str) -> dict:
    """(b) the exported folder, loaded without full-precision weights."""
    from mpsearch.apps.pipeline import load_pipeline
    from mpsearch.models import measured_bytes

    t0 = time.perf_counter()
    pipe = load_pipeline(workdir / f"q-{fmt}")
    return {"peak": _peak_bytes(), "load_s": time.perf_counter() - t0, "bytes": measured_bytes(pipe)}


CHILDREN = {"build": child_build, "base": child_base, "apply": child_apply, "load": child_load}


def run_child(kind: str, workdir: Path, *args) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", kind, "--workdir", str(workdir), *args],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench_export: the {kind} step failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--formats", default="int8,nvfp4", help="uniform plans to measure (comma-separated)")
    ap.add_argument("--workdir", help="folder for the fp and exported pipelines (default: a temporary one, removed)")
    ap.add_argument("--no-doc", action="store_true", help="print the table only; leave docs/benchmarks.md alone")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args, rest = ap.parse_known_args(argv)
    formats = [f for f in args.formats.split(",") if f]
    if args.child:
        workdir = Path(args.workdir)
        result = CHILDREN[args.child](workdir, formats if args.child == "build" else rest[0]) \
            if args.child in ("build", "apply", "load") else CHILDREN[args.child](workdir)
        print(json.dumps(result))
        return
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-export-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        steps = tqdm(total=2 + 2 * len(formats), desc="bench_export")
        built = run_child("build", workdir, "--formats", args.formats)
        steps.update()
        base = run_child("base", workdir)
        steps.update()
        rows = []
        for fmt in formats:
            a = run_child("apply", workdir, fmt)
            steps.update()
            b = run_child("load", workdir, fmt)
            steps.update()
            assert a["bytes"] == b["bytes"], (a, b)
            rows.append(f"| uniform {fmt} | {gb(b['bytes'])} | {gb(a['peak'])} | {a['load_s'] + a['apply_s']:.1f} s | "
                        f"{gb(b['peak'])} | {b['load_s']:.1f} s | {gb(b['peak'] - b['bytes'])} | "
                        f"{a['export_s']:.1f} s |")
        steps.close()
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    body = (f"SD1.5 UNet at real size ({built['params']:,} parameters, float32, {gb(built['fp_bytes'])}; random "
            f"weights), the other components tiny. Peak RSS of a fresh process; a process that only imports mpsearch "
            f"and loads the small components peaks at {gb(base['peak'])}. Target: (b) <= plan bytes + 1 GB.\n\n"
            "| plan | plan bytes | (a) fp load + apply_plan: peak RSS | time | (b) load exported folder: peak RSS | "
            "time | (b) peak - plan bytes | export time |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n" + "\n".join(rows) + "\n")
    print(body)
    if not args.no_doc:
        write_section("export", "Quantized checkpoints: load peak at SD1.5 size (export + load vs fp load + apply)",
                      body, f"python scripts/bench_export.py --formats {args.formats}")

if __name__ == "__main__":
    main()

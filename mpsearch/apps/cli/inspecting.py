"""`mpsearch inspect` (layers, roles, bytes; real architectures by name) and `mpsearch generate`."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from mpsearch.apps import pipeline
from mpsearch.apps.cli.common import condition_list, emit, text_table
from mpsearch.apps.cli.model_source import pipeline_for
from mpsearch.apps.cli.solving import cache_unit_rows
from mpsearch.archs import arch_report
from mpsearch.budget import format_bytes
from mpsearch.formats import available_formats
from mpsearch.io import atomic_write_bytes
from mpsearch.models import describe, measured_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.executor import apply_plan
from mpsearch.runtime.generation import generate


def cmd_inspect(args) -> int:

    if args.arch:
        return _inspect_arch(args)
    denoiser = pipeline.load_meta_denoiser(args.model)  # from the configs: no weights read
    info = describe(denoiser)
    lo, hi = info.size_range()
    uniform = {f: info.bytes_for({l.name: f for l in info.layers if f in l.eligible}) for f in available_formats()}
    data = {"model": args.model, "class": info.denoiser_class, "fingerprint": info.fingerprint,
            "layers": [l.to_dict() | {"numel": l.numel} for l in info.layers], "fixed_bytes": info.fixed_bytes,
            "fp_bytes": info.fp_bytes, "uniform_bytes": uniform, "min_bytes": lo, "max_bytes": hi,
            "tie_groups": [list(g) for g in info.tie_groups], "cacheable_blocks": list(info.blocks)}
    data["cache_units"] = cache_unit_rows(denoiser)
    data["variants"] = _variant_rows(info)
    rows = [[l.name, l.kind, "x".join(map(str, l.shape)), l.role.value, ",".join(l.eligible)] for l in info.layers]
    lines = [f"{info.denoiser_class} ({args.model}), {len(info.layers)} candidate layers, "
             f"fingerprint {info.fingerprint}"]
    lines += text_table(rows, ["layer", "kind", "shape", "role", "eligible"])
    lines += ["", f"fixed (never quantized): {format_bytes(info.fixed_bytes)}"]
    lines += [f"uniform {f:6s}: {format_bytes(b)} ({b:,} B)" for f, b in uniform.items()]
    lines += [f"smallest possible: {format_bytes(lo)} ({lo:,} B); largest: {format_bytes(hi)} ({hi:,} B)"]
    lines += ["", "quantizer variants (profiled with --variants; the same codes as their format, plus the bytes "
              "shown):"]
    lines += text_table([[v["name"], v["layers"], format_bytes(v["bytes"]), f"+{v['extra_bytes']:,} B"]
                         for v in data["variants"]], ["variant", "layers", "uniform size", "extra over format"])
    lines += [f"cache unit {u['name']} ({u['kind']}: {', '.join(u['modules'])}): "
              + (f"{u['share']:.0%} of a step's FLOPs" if u["share"] is not None else "share of compute unknown")
              for u in data["cache_units"]]
    return emit(args, data, lines)


def _inspect_arch(args) -> int:

    r = arch_report(args.arch, dtype=args.dtype)
    lines = [f"{r['title']} ({r['arch']}): {r['class']}, {r['params']:,} parameters, {r['dtype']}, "
             f"{r['layers']} candidate layers; built on the meta device from {r['source']}", ""]
    lines += text_table([[f, format_bytes(b), f"{b:,}"] for f, b in r["uniform_bytes"].items()],
                    ["uniform", "size", "bytes"])
    lines += ["", f"smallest possible: {format_bytes(r['min_bytes'])}; with the default pins: "
              f"{format_bytes(r['min_bytes_default_pins'])}; largest: {format_bytes(r['max_bytes'])}", ""]
    lines += text_table([[b["budget"], "yes" if b["feasible"] else "no", "yes" if b["feasible_default_pins"] else "no",
                      "yes" if b["fits_fp"] else "no"] for b in r["budgets"]],
                    ["budget", "feasible", "with default pins", "fits unquantized"])
    lines += [""] + text_table([[role, v["layers"], f"{v['params']:,}", format_bytes(v["fp_bytes"])]
                            for role, v in sorted(r["roles"].items(), key=lambda kv: -kv[1]["params"])],
                           ["role", "layers", "params", "size"])
    return emit(args, r, lines)


def _variant_rows(info) -> list[dict]:
    """Each calibrated variant: the layers that may take it, the denoiser's bytes with every such layer in it
    and what it stores beyond its base format (smooth's factors)."""
    rows = []
    for name in available_formats(calibrated=True):
        base, _, variant = name.partition(":")
        if not variant:
            continue
        layers = [l for l in info.layers if l.why_not(name) is None]
        extra = sum(l.nbytes(name) - l.nbytes(base) for l in layers)
        rows.append({"name": name, "layers": len(layers), "bytes": info.bytes_for({l.name: name for l in layers}),
                     "extra_bytes": extra})
    return rows


def cmd_generate(args) -> int:
    import numpy as np
    from PIL import Image


    plan = Plan.load(args.plan) if args.plan else None
    pipe = pipeline_for(args.model, plans=[(args.plan, plan)] if plan else ())
    with apply_plan(pipe, plan, ignore_weights=args.ignore_weights) if plan else contextlib.nullcontext():
        t0 = time.perf_counter()
        conditions = condition_list(args, pipe)
        images = generate(pipe, conditions, args.seed, args.steps, args.guidance, args.size)
        seconds = time.perf_counter() - t0
        nbytes = measured_bytes(pipe)
    out = Path(args.out)
    paths = []
    import io as _io

    for i, (label, img) in enumerate(zip(conditions, images, strict=True)):
        rgb = img.shape[-1] == 3
        arr = (np.clip(img if rgb else img[..., 0], 0, 1) * 255).round().astype("uint8")
        buf = _io.BytesIO()
        picture = Image.fromarray(arr, mode="RGB" if rgb else "L")
        if max(picture.size) < 64:  # tiny images are enlarged to be seen; real ones are kept as they are
            picture = picture.resize((64, 64), Image.NEAREST)
        picture.save(buf, format="PNG")
        name = f"{i:03d}_prompt.png" if isinstance(label, str) else f"{i:03d}_label{label}.png"
        paths.append(str(atomic_write_bytes(out / name, buf.getvalue())))
    data = {"images": paths, "plan": args.plan, "denoiser_bytes": nbytes, "seconds": seconds}
    return emit(args, data, [f"wrote {len(paths)} images to {out} ({seconds:.2f} s, denoiser {nbytes:,} B)"])

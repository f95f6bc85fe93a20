"""GPTQ's column order: the paper's natural order (mpsearch's) against act-order, per layer's output error.

For each default model, the calibration pass of the evidence suite's profile configuration (the statistics a
variants profile records: its first 4 conditions, its first seed) and a held-out pass (the next 4 conditions,
its second seed); then for every layer whose hessian is recorded and every base format: the weight error
carried to the layer's output, ``tr(dW H dW^T)`` (H the inputs' second moments), on the calibration rows
(in-sample: what GPTQ minimizes) and on the held-out rows, of round-to-nearest, of GPTQ in natural column order
and of GPTQ in act-order (descending ``H_jj``), on the same fixed RTN scales, summed over layers.

    python scripts/bench_gptq_order.py                 # both models (a few minutes on 2 CPUs)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import publish  # noqa: E402

import mpsearch  # noqa: E402
from mpsearch.apps.profile import ProfileConfig  # noqa: E402
from mpsearch.formats import get_format  # noqa: E402
from mpsearch.models import describe, get_denoiser  # noqa: E402
from mpsearch.profiling.calibrate import calibrate  # noqa: E402
from mpsearch.quantizers.gptq import act_order, gptq_quantize  # noqa: E402

STORED = Path(__file__).resolve().parent.parent / "docs" / "bench_all.json"
BASES = ("int8", "nvfp4", "int4")


def output_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """tr(dW H dW^T) for dW = w - q, in float64."""
    d = w.reshape(w.shape[0], -1).double() - q.reshape(q.shape[0], -1).double()
    return float(torch.einsum("oi,ij,oj->", d, h.double(), d))


def run_model(model: str, args: dict) -> dict:
    pipe = mpsearch.load_pipeline(model)
    info = describe(pipe)
    config = ProfileConfig(labels=tuple(args["labels"]), seeds=tuple(args["profile_seeds"]), steps=args["steps"])
    every = dict.fromkeys(range(len(info.layers)), True)
    calibration = calibrate(pipe, info, config, every, progress=False)
    held = ProfileConfig(labels=config.labels[4:8], seeds=config.seeds[1:2], steps=config.steps)
    held_out = calibrate(pipe, info, held, every, progress=False)
    modules = dict(get_denoiser(pipe).named_modules())
    out = {}
    for base in BASES:
        fmt = get_format(base)
        rows = []
        for li, calib in calibration.items():
            w = modules[info.layers[li].name].weight.detach().float()
            if calib.hessian is None or fmt.why_ineligible(w.shape) is not None:
                continue
            h, h_out = calib.hessian, held_out[li].hessian
            q = {"rtn": fmt.dequantize(fmt.quantize(w)),
                 "natural": fmt.dequantize(gptq_quantize(fmt, w, h)),
                 "act": fmt.dequantize(gptq_quantize(fmt, w, h, order=act_order(h)))}
            row = {"layer": info.layers[li].name}
            for k, v in q.items():
                row[k] = output_error(w, v, h)
                row[k + "_held_out"] = output_error(w, v, h_out)
            rows.append(row)
        out[base] = rows
        print(f"{model} {base}: {len(rows)} layers", flush=True)
    return {"model": model, "formats": out}


def render(results: list[dict]) -> str:
    lines = ["Per layer, the weight error carried to its output, `tr(dW H dW^T)`, summed over the layers whose "
             "hessian is recorded, as a ratio to round-to-nearest's on the same rows; the same RTN scales for all.",
             "", "| model | format | layers | natural / RTN (calibration rows) | act-order / RTN (calibration rows) | "
             "natural / RTN (held-out rows) | act-order / RTN (held-out rows) | act-order / natural (held-out) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for base, rows in r["formats"].items():
            if not rows:
                continue
            t = {k: sum(x[k] for x in rows) for k in rows[0] if k != "layer"}
            lines.append(f"| {r['model']} | {base} | {len(rows)} | {t['natural'] / t['rtn']:.3f} | "
                         f"{t['act'] / t['rtn']:.3f} | {t['natural_held_out'] / t['rtn_held_out']:.3f} | "
                         f"{t['act_held_out'] / t['rtn_held_out']:.3f} | "
                         f"{t['act_held_out'] / t['natural_held_out']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="default,default-unet")
    ap.add_argument("--no-doc", action="store_true")
    args = ap.parse_args(argv)
    stored = json.loads(STORED.read_text())["args"]
    results = [run_model(m, stored) for m in args.models.split(",")]
    publish("bench_gptq_order", "GPTQ's column order: act-order against natural order", render(results),
            "bench_gptq_order.py", argv, doc=not args.no_doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

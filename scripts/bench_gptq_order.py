"""GPTQ's column order: act-order (mpsearch's default) against the paper's natural order, per layer's output error.

For each default model, the calibration pass of the evidence suite's profile configuration (the statistics a
variants profile records), then for every layer whose hessian is recorded and every base format: the weight
error carried to the layer's output on the calibration rows, ``tr(dW H dW^T)`` (H the inputs' second moments),
of round-to-nearest, of GPTQ in natural column order and of GPTQ in act-order (descending ``H_jj``), on the same
fixed RTN scales. Summed over layers (the larger layers' errors dominate, as they do in the image) and as the
median of the per-layer ratio act-order / natural.

    python scripts/bench_gptq_order.py                 # both models (a few minutes on 2 CPUs)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchdoc import publish  # noqa: E402

import mpsearch  # noqa: E402
from mpsearch.apps.profile import ProfileConfig  # noqa: E402
from mpsearch.formats import get_format, matrix_shape  # noqa: E402
from mpsearch.models import describe, get_denoiser  # noqa: E402
from mpsearch.profiling.calibrate import calibrate  # noqa: E402
from mpsearch.quantizers.gptq import gptq_quantize  # noqa: E402

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
    calibration = calibrate(pipe, info, config, dict.fromkeys(range(len(info.layers)), True), progress=False)
    modules = dict(get_denoiser(pipe).named_modules())
    out = {}
    for base in BASES:
        fmt = get_format(base)
        rows = []
        for li, calib in calibration.items():
            w = modules[info.layers[li].name].weight.detach().float()
            if calib.hessian is None or fmt.why_ineligible(w.shape) is not None:
                continue
            h = calib.hessian
            natural = gptq_quantize(fmt, w, h, order=torch.arange(matrix_shape(w.shape)[1]))
            rows.append({"layer": info.layers[li].name,
                         "rtn": output_error(w, fmt.dequantize(fmt.quantize(w)), h),
                         "natural": output_error(w, fmt.dequantize(natural), h),
                         "act": output_error(w, fmt.dequantize(gptq_quantize(fmt, w, h)), h)})
        out[base] = rows
        print(f"{model} {base}: {len(rows)} layers", flush=True)
    return {"model": model, "formats": out}


def render(results: list[dict]) -> str:
    lines = ["Per layer, the weight error carried to its output on the calibration rows, `tr(dW H dW^T)`, summed "
             "over the layers whose hessian is recorded; the same RTN scales for all three.", "",
             "| model | format | layers | RTN | GPTQ, natural order | GPTQ, act-order | act / natural (sum) | "
             "act / natural (median per layer) | layers where act-order is lower |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        for base, rows in r["formats"].items():
            if not rows:
                continue
            rtn, nat, act = (sum(x[k] for x in rows) for k in ("rtn", "natural", "act"))
            per = [x["act"] / x["natural"] for x in rows if x["natural"] > 0]
            lower = sum(x["act"] < x["natural"] for x in rows)
            lines.append(f"| {r['model']} | {base} | {len(rows)} | {rtn:.4g} | {nat:.4g} ({nat / rtn:.2f}x RTN) | "
                         f"{act:.4g} ({act / rtn:.2f}x RTN) | {act / nat:.2f} | {float(np.median(per)):.2f} | "
                         f"{lower} of {len(rows)} |")
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

"""The same plan's codes made two ways, in the images: the evidence's own ILP plan (docs/bench_variants.json) with
its gptq and smooth-gptq codes made by GPTQ in natural order or act-order (``--compare order``), or from a
calibration pass over the profile's first 4 conditions or all 10 (``--compare coverage``), scored on the test
seeds, paired.

The plan and the kernels (NVFP4's float32 path) are the evidence's; only the way the codes are made differs, so
the comparison isolates the codes. Per (model, budget): both mean MSEs, the ratio alternative / baseline with its
bootstrap interval and the raw Wilcoxon p (alternative lower).

    python scripts/bench_gptq_order_images.py --cells "default:min+25% to nvfp4,default:nvfp4+33% to int8"
    python scripts/bench_gptq_order_images.py --compare coverage --cells "default:min+25% to nvfp4,default:=nvfp4"
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from unittest import mock

import mpsearch
import mpsearch.profiling.calibrate as calibration_pass
import mpsearch.quantizers.smooth as smooth
import mpsearch.quantizers.variants as variants
from mpsearch.apps.evaluate import evaluate_plan
from mpsearch.apps.profile import ProfileConfig
from mpsearch.apps.report.significance import compare
from mpsearch.models import describe
from mpsearch.plan import Plan
from mpsearch.quantizers.gptq import act_order, gptq_quantize
from mpsearch.runtime.generation import generate_many
from mpsearch.runtime.kernels import select_kernels

DOCS = Path(__file__).resolve().parent.parent / "docs"


def in_act_order(fmt, w, hessian, rows=None, **kw):
    """gptq_quantize with act-order (the library's default is natural order)."""
    return gptq_quantize(fmt, w, hessian, rows=rows, order=act_order(hessian), **kw)


@contextlib.contextmanager
def act_ordered():
    """Every gptq and smooth-gptq code made inside rounds in act-order."""
    with mock.patch.object(variants, "gptq_quantize", in_act_order), \
            mock.patch.object(smooth, "gptq_quantize", in_act_order):
        yield


@contextlib.contextmanager
def calibrated_on(conditions: int):
    """The calibration pass inside records the profile's first ``conditions`` conditions (default 4)."""
    with mock.patch.object(calibration_pass, "CALIBRATION_CONDITIONS", conditions):
        yield


#: comparison -> (baseline name, its context, alternative name, its context): the same plan, codes made two ways
COMPARISONS = {
    "order": ("natural", contextlib.nullcontext, "act-order", act_ordered),
    "coverage": ("4 conditions", lambda: calibrated_on(4), "10 conditions", lambda: calibrated_on(10)),
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", default="default:min+25% to nvfp4,default:nvfp4+33% to int8,default-unet:=nvfp4,"
                    "default-unet:nvfp4+33% to int8", help="comma-separated model:budget of docs/bench_variants.json")
    ap.add_argument("--compare", choices=sorted(COMPARISONS), default="order",
                    help="order: GPTQ's column order; coverage: the calibration pass over 4 or all 10 conditions")
    args = ap.parse_args(argv)
    base, base_ctx, alt, alt_ctx = COMPARISONS[args.compare]
    print(f"| model | budget | {base} MSE | {alt} MSE | {alt} / {base} (95% CI) | Wilcoxon p ({alt} lower) |")
    print("| --- | --- | ---: | ---: | --- | ---: |")
    select_kernels("nvfp4=float")
    stored = json.loads((DOCS / "bench_all.json").read_text())["args"]
    evidence = {r["model"]: r for r in json.loads((DOCS / "bench_variants.json").read_text())["results"]}
    config = ProfileConfig(labels=tuple(stored["labels"]), seeds=tuple(stored["profile_seeds"]), steps=stored["steps"])
    seeds = tuple(stored["seeds"])
    for cell in args.cells.split(","):
        model, budget = cell.split(":", 1)
        pipe = mpsearch.load_pipeline(model)
        info = describe(pipe)
        layers = evidence[model]["budgets"][budget]["rows"]["mpsearch (variants)"]["layers"]
        need = {i: True for i, layer in enumerate(info.layers) if ":" in layers.get(layer.name, "fp")}
        reference = generate_many(pipe, config.labels, seeds, config.steps)
        scores = {}
        for name, context in ((base, base_ctx), (alt, alt_ctx)):
            with context():
                calib = {info.layers[i].name: c
                         for i, c in calibration_pass.calibrate(pipe, info, config, need, progress=False).items()}
                plan = Plan.from_assignment(info, layers, calibration=calib)
                scores[name] = evaluate_plan(pipe, plan, labels=config.labels, seeds=seeds, steps=config.steps,
                                             reference=reference)
        c = compare(scores[alt]["mse_per_image"], scores[base]["mse_per_image"])
        print(f"| {model} | {budget} | {scores[base]['mse']:.3g} | {scores[alt]['mse']:.3g} | "
              f"{c['ratio']:.2f} ({c['lo']:.2f}-{c['hi']:.2f}) | {c['p']:.2g} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quantization error (SQNR, dB) of each format on the default models' weights.

    python scripts/bench_formats.py
"""

from __future__ import annotations

import numpy as np
from benchdoc import write_section

from mpsearch.apps.pipeline import load_pipeline
from mpsearch.formats import get_format
from mpsearch.metrics import sqnr
from mpsearch.models import describe, get_denoiser

FORMATS = ("int8", "nvfp4", "int4")


def main() -> None:
    rows = []
    for model in ("default", "default-unet"):
        pipe = load_pipeline(model)
        den = get_denoiser(pipe)
        info = describe(den)
        modules = dict(den.named_modules())
        for fmt in FORMATS:
            f = get_format(fmt)
            vals, err2, ref2, n = [], 0.0, 0.0, 0
            for layer in info.layers:
                if fmt not in layer.eligible:
                    continue
                w = modules[layer.name].weight.detach()
                wq = f.fake_quantize(w)
                vals.append(sqnr(w, wq))
                err2 += float(((wq.double() - w.double()) ** 2).sum())
                ref2 += float((w.double() ** 2).sum())
                n += w.numel()
            total = sum(l.numel for l in info.layers)
            rows.append((model, fmt, len(vals), len(info.layers), n / total, float(np.mean(vals)),
                         float(np.min(vals)), float(np.max(vals)), 10 * np.log10(ref2 / err2)))
    lines = ["| model | format | eligible layers | share of weights | mean layer SQNR | min | max | whole-model SQNR |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for m, f, k, L, share, mean, lo, hi, whole in rows:
        lines.append(f"| {m} | {f} | {k}/{L} | {share:.1%} | {mean:.2f} dB | {lo:.2f} | {hi:.2f} | {whole:.2f} dB |")
    body = ("Weight SQNR = 10 log10(||W||^2 / ||W - Q(W)||^2) per eligible layer (weights only; activations are "
            "not involved). For scale, each bit of precision is worth about 6 dB.\n\n"
            + "\n".join(lines))
    print(body)
    write_section("bench_formats", "Formats: weight quantization error on the default models", body,
                  "python scripts/bench_formats.py")


if __name__ == "__main__":
    main()

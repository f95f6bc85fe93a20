"""`mpsearch export`: a pipeline folder whose denoiser holds a plan's packed weights (a quantized checkpoint)."""

from __future__ import annotations

from mpsearch.apps import pipeline
from mpsearch.apps.cli.common import emit
from mpsearch.budget import format_bytes
from mpsearch.plan import Plan
from mpsearch.runtime.checkpoint import export, read_manifest


def cmd_export(args) -> int:
    plan = Plan.load(args.plan)
    pipe = pipeline.load_pipeline(args.model)
    out = export(pipe, plan, args.out, ignore_weights=args.ignore_weights)
    manifest = read_manifest(out)
    fp_bytes = plan.predictions.get("fp_bytes")
    data = {"out": str(out), "model": args.model, "plan": args.plan, "denoiser_class": manifest.denoiser_class,
            "fingerprint": manifest.fingerprint, "denoiser_bytes": manifest.bytes, "fp_bytes": fp_bytes,
            "file_bytes": manifest.file_bytes, "formats": plan.format_counts()}
    ratio = f" ({manifest.bytes / fp_bytes:.0%} of full precision)" if fp_bytes else ""
    lines = [f"wrote {out}: {manifest.denoiser_class} packed to {format_bytes(manifest.bytes)}{ratio}; "
             f"load it with `mpsearch generate --model {out}` or mpsearch.load_pipeline({str(out)!r})"]
    return emit(args, data, lines)

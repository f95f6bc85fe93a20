"""`mpsearch eval`, `mpsearch demo` and `mpsearch report`: scoring a plan, the whole flow, the HTML report."""

from __future__ import annotations

import sys

from mpsearch.cli.common import condition_list, emit
from mpsearch.classifier import load_classifier
from mpsearch.demo import run_demo
from mpsearch.evaluate import evaluate_plan
from mpsearch import pipeline

from mpsearch.plan import Plan
from mpsearch.profiling.profiler import default_profile_path
from mpsearch.report import report


def cmd_eval(args) -> int:

    pipe = pipeline.load_pipeline(args.model)
    plan = Plan.load(args.plan) if args.plan else None
    conditions = condition_list(args, pipe)
    text = any(isinstance(c, str) for c in conditions)  # the bundled classifier knows the digits only
    scores = evaluate_plan(pipe, plan, labels=tuple(conditions), seeds=tuple(args.seeds), steps=args.steps,
                           classifier=None if text else load_classifier(), size=args.size)
    data = {"plan": args.plan, **scores}
    return emit(args, data, [f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in data.items()])


def cmd_demo(args) -> int:

    result = run_demo(model=args.model, progress=not args.json)
    return emit(args, result, result.pop("lines") if not args.json else [])


def _default_conditions(args) -> bool:
    """Neither --prompts nor --labels of one's own: the report picks (held-out prompts for text-to-image)."""
    return args.prompts is None and list(args.labels) == list(range(10))


def cmd_report(args) -> int:

    profile = args.profile
    if profile is None and default_profile_path(args.model).is_file():
        profile = default_profile_path(args.model)
    log = None if args.json else (lambda msg: print(f"report: {msg}", file=sys.stderr))
    r = report(profile, args.plan or [], None if args.no_images else args.model, out=args.out,
               labels=None if _default_conditions(args) else condition_list(args), seed=args.seed, steps=args.steps, metric=args.metric, points=args.points,
               log=log)
    data = {"folder": r["folder"], "index": r["index"], "files": r["files"],
            "profile": str(profile) if profile else None, "variants": [v.to_dict() for v in r["data"].variants]}
    lines = [f"report {r['index']}: {len(r['files'])} files"] + [f"note: {n}" for n in r["data"].notes]
    return emit(args, data, lines)

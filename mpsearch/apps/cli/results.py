"""`mpsearch eval`, `mpsearch demo` and `mpsearch report`: scoring a plan, the whole flow, the HTML report."""

from __future__ import annotations

import sys

from mpsearch.apps.cli.common import condition_list, emit
from mpsearch.apps.cli.model_source import model_for, pipeline_for
from mpsearch.apps.demo import run_demo
from mpsearch.apps.evaluate import evaluate_plan
from mpsearch.apps.report import report
from mpsearch.classifier import load_classifier
from mpsearch.plan import Plan
from mpsearch.profiling.profiler import default_profile_path
from mpsearch.profiling.store import Profile


def cmd_eval(args) -> int:

    plan = Plan.load(args.plan) if args.plan else None
    pipe = pipeline_for(args.model, plans=[(args.plan, plan)] if plan else ())
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
    if profile is None and default_profile_path(args.model or "default").is_file():
        profile = default_profile_path(args.model or "default")
    model = args.model
    if not args.no_images and model is None:  # the model the profile (else the first plan) was made for
        prof = Profile.load(profile) if profile else None
        plans = [(p, Plan.load(p)) for p in (args.plan or [])[:1]] if prof is None else ()
        model = model_for(None, profile=prof, plans=plans)
    log = None if args.json else (lambda msg: print(f"report: {msg}", file=sys.stderr))
    r = report(profile, args.plan or [], None if args.no_images else model, out=args.out,
               labels=None if _default_conditions(args) else condition_list(args), seed=args.seed, steps=args.steps,
               metric=args.metric, points=args.points,
               log=log)
    data = {"folder": r["folder"], "index": r["index"], "files": r["files"],
            "profile": str(profile) if profile else None, "variants": [v.to_dict() for v in r["data"].variants]}
    lines = [f"report {r['index']}: {len(r['files'])} files"] + [f"note: {n}" for n in r["data"].notes]
    return emit(args, data, lines)

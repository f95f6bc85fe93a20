"""`mpsearch solve`: one budget, budget sweeps and Pareto fronts, compute budgets, the Optuna search, cache
schedules, and role-based plans for named architectures.

Solving a profile needs no pipeline: what loads one (diffusers, the runtime's kernels, numba), the Optuna search
and the cache schedule's solver are imported by the paths that use them, so that `solve` on a profile starts in
well under the seconds those imports take (tests/applications/test_cli_solve_imports.py)."""

from __future__ import annotations

from pathlib import Path

from mpsearch.allocation.config import SolveConfig
from mpsearch.allocation.formulation import check_compute, formulate
from mpsearch.allocation.pareto import pareto
from mpsearch.apps.cli.common import budget_slug, emit, text_table
from mpsearch.archs import plan_without_weights
from mpsearch.budget import format_bytes, parse_budget
from mpsearch.cache_units import cache_units, compute_shares
from mpsearch.errors import UsageError
from mpsearch.models import Role, get_denoiser
from mpsearch.plan import Plan
from mpsearch.profiling.store import Profile
from mpsearch.profiling.store.files import default_profile_path


def pipeline_for(model, *, profile=None):
    """:func:`mpsearch.apps.cli.model_source.pipeline_for`, imported on the first pipeline a solve needs."""
    from mpsearch.apps.cli.model_source import pipeline_for as load  # lazy: not needed to read a profile or solve

    return load(model, profile=profile)


def parse_role_pins(spec):
    """``--role-pins``: ``default`` (None: ``models.DEFAULT_ROLE_PINS``), ``none`` ({}) or ``ROLE=FORMAT,...``."""
    if spec is None or spec == "default":
        return None
    if spec == "none":
        return {}
    out = {}
    for item in spec.split(","):
        role, sep, fmt = item.strip().partition("=")
        if not sep or role not in {r.value for r in Role} or not fmt:
            raise UsageError(f"--role-pins {spec!r}: {item.strip()!r} is not ROLE=FORMAT with a known role; use "
                             f"default, none, or e.g. time_embed=fp,modulation=int8 (roles: "
                             f"{', '.join(r.value for r in Role)})")
        out[role] = fmt
    return out


def solve_config(args, *, budget=None) -> SolveConfig:
    """The solve flags as a :class:`~mpsearch.allocation.config.SolveConfig` (the field names are the flags')."""
    compute = dict(compute=args.compute, compute_cost=args.compute_cost or "bops",
                   act_windows=args.act_windows) if args.compute else {}
    return SolveConfig(budget=budget, metric=args.metric, solver=args.solver, pins=args.pins, tie=args.tie,
                       role_pins=parse_role_pins(args.role_pins), objective_weights=args.objective_weights,
                       max_damage=args.max_damage, fp_act_windows=args.fp_act_windows,
                       allow_partial=args.allow_partial, **compute)


def cmd_solve(args) -> int:

    if args.budget is None and args.pareto is None:
        raise UsageError("solve needs --budget (e.g. 60%, 600KB, or a sweep 400KB:900KB:50KB) or --pareto N")
    if args.compute_cost is not None and not args.compute:
        raise UsageError(f"--compute-cost {args.compute_cost} prices a compute budget: give one too, "
                         "e.g. --compute 50%")
    sweeping = args.pareto is not None or (args.budget is not None and ":" in args.budget)
    searching = sweeping or args.search != "ilp" or args.compute
    if searching and (args.arch or args.full_computations is not None or args.speedup is not None):
        raise UsageError("--pareto, budget ranges, --compute and --search optuna do not combine with --arch or a "
                         "cache schedule; run them separately")
    if sweeping and args.search != "ilp":
        raise UsageError("--search optuna refines one budget; give a single --budget, not a sweep")
    if not sweeping:
        parse_budget(args.budget, fp_bytes=1, quantizable_numel=1)  # a malformed budget fails before any work
    if args.arch:
        return _solve_arch(args)
    # every flag checked before any work (a malformed one is a one-line error)
    config = solve_config(args, budget=None if sweeping else args.budget)
    prof_path = Path(args.profile) if args.profile else default_profile_path()
    prof = Profile.load(prof_path)
    if not config.allow_partial:
        prof.check_complete()
    if args.full_computations is not None or args.speedup is not None:
        return _solve_with_cache(args, prof, prof_path, config)
    pipe = None
    if args.compute:
        check_compute(prof, args.compute, args.compute_cost)  # malformed, or no latency table: before any work
        pipe = pipeline_for(args.model, profile=prof)
    form = formulate(prof, config=config, pipe=pipe)
    compute_info = form.compute_info()
    slug = (budget_slug(args.budget or f"pareto{args.pareto}")
            + (f"-c{budget_slug(args.compute)}" if args.compute else ""))
    if sweeping:
        out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}"
        r = pareto(form, None if args.pareto is not None else args.budget, n=args.pareto, solver=config.solver,
                   out=out, progress=not args.json)
        points = [p.to_dict() for p in r["points"]]
        data = {"folder": str(out), "files": r["files"], "points": points, "uniform": r["uniform"],
                "compute": compute_info}
        lines = text_table([[format_bytes(p["budget_bytes"]), p["status"],
                         "-" if p["total_bytes"] is None else format_bytes(p["total_bytes"]),
                         "-" if p["objective"] is None else f"{p['objective']:.4g}", "*" if p["on_frontier"] else ""]
                        for p in points], ["budget", "status", "bytes", "objective", "frontier"])
        return emit(args, data, lines + [f"wrote {', '.join(r['files'].values())} and "
                                          f"{sum(1 for p in points if p['plan'])} plans under {out}/plans"])
    report = None
    if args.search == "optuna":
        from mpsearch.allocation.refine import default_storage, refine  # lazy: not needed to read a profile or solve

        pipe = pipe or pipeline_for(args.model, profile=prof)
        plan, report = refine(form, pipe, args.budget, trials=args.trials,
                              storage=args.storage or default_storage(prof_path), sampler=args.sampler,
                              seeds=tuple(args.search_seeds), steps=args.search_steps, progress=not args.json)
        slug += "-optuna"
    else:
        plan = form.to_plan(form.solve())
    if form.compute is not None:
        compute_info = form.compute_info(form.compute.encode(plan.layers, plan.overrides))
    out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}.yaml"
    plan.save(out)
    return emit(args, *_plan_report(args, plan, out, form, compute_info, report))


def _plan_report(args, plan, out, form, compute_info, report) -> tuple[dict, list[str]]:
    """The JSON object and the lines `solve` prints for one plan."""
    counts = plan.format_counts()
    data = {"plan": str(out), "budget": plan.budget, "bytes": plan.predicted_bytes, "formats": counts,
            "objective": plan.predictions.get("objective"), "solver": plan.provenance.get("solver"),
            "status": plan.provenance.get("status"), "seconds": plan.provenance.get("seconds"),
            "overrides": len(plan.overrides), "compute": compute_info, "search": report}
    lines = [f"plan {out}: {format_bytes(plan.predicted_bytes)} ({plan.predicted_bytes:,} B) <= budget {args.budget} "
             f"({plan.budget['bytes']:,} B); " + ", ".join(f"{k}: {v}" for k, v in counts.items())
             + f"; objective {plan.predictions.get('objective'):.4g} ({plan.provenance.get('status')})"
             + (f"; {len(plan.overrides)} fp-activation windows" if plan.overrides else "")]
    cm = form.compute
    if cm is not None:
        p = compute_info["predicted"]
        shown = (lambda v: f"{v * 1e3:.4g} ms") if cm.kind == "latency" else (lambda v: f"{v:.4g} bit operations")
        priced = f"measured latency on {cm.info.get('device')}" if cm.kind == "latency" else "bit operations"
        lines.append(f"compute ({priced}): predicted {shown(p)} per denoiser call = {p / cm.full:.1%} of full "
                     f"precision's {shown(cm.full)}; limit {shown(cm.limit)} ({args.compute})")
    if report and report.get("chosen"):
        lines.append(f"optuna: {report['trials']} trials in study {report['study_name']}; chosen trial "
                     f"{report['chosen']['trial']} ({report['chosen']['source']}) scores "
                     f"{report['chosen']['score_vs_reference']:.3f} x the ILP's plan on the search seeds")
        v = report.get("validation")
        if v:
            kept = "kept" if v["kept"] == "search" else "not significant, the ILP's plan is kept"
            lines.append(f"validation on seeds {v['seeds']} ({v['images']} images): the pick scores "
                         f"{v['score_vs_ilp']:.3f} x the ILP's plan, one-sided Wilcoxon p = {v['p_value']:.3g}: {kept}")
    return data, lines


def _solve_arch(args) -> int:
    """solve --arch: what can be planned without weights (feasibility, uniform and role-based plans)."""

    if args.profile:
        raise UsageError("give either --arch (plan without weights) or --profile (plan from measurements), not both")
    role_pins = parse_role_pins(args.role_pins)
    r = plan_without_weights(args.arch, args.budget, dtype=args.dtype, role_pins=role_pins)
    info, assignment = r.pop("info"), r.pop("assignment")
    lines = [f"{args.arch} ({r['class']}) under {args.budget} ({r['budget']['bytes']:,} B), without weights:",
             f"feasible: {'yes' if r['feasible'] else 'no'} (smallest possible {format_bytes(r['min_bytes'])}, "
             f"unquantized {format_bytes(r['fp_bytes'])})", ""]
    lines += text_table([[f, format_bytes(u["bytes"]), "fits" if u["fits"] else "-"] for f, u in r["uniform"].items()],
                    ["uniform plan", "size", ""])
    lines += [""] + text_table([[s["step"], format_bytes(s["bytes"]), "fits" if s["fits"] else "-"]
                                for s in r["role_ladder"]],
                               ["role-based plan", "size", ""])
    r["plan"] = None
    if assignment is not None:
        plan = Plan.from_assignment(info, assignment, budget=r["budget"],
                                    provenance={"solver": "role-ladder", "arch": args.arch, "status": "no profile",
                                                "role_pins": r["role_pins"], "step": r["role_plan"]["step"]})
        out = Path(args.out) if args.out else Path("plans") / f"{args.arch}-roles-{budget_slug(args.budget)}.yaml"
        plan.save(out)
        r["plan"] = str(out)
        lines += ["", f"role-based plan: {r['role_plan']['step']} -> {format_bytes(r['role_plan']['bytes'])}, "
                      f"written to {out}"]
    else:
        lines += ["", "no role-based plan fits this budget" + (" with the default pins (try --role-pins none)"
                                                              if r["feasible"] and role_pins is None else "")]
    lines += [f"needs a profile: {r['needs_profile']}"]
    return emit(args, r, lines)


def cache_unit_rows(pipe) -> list[dict]:
    """inspect: the cacheable units (mpsearch.cache_units) with the share of a step's FLOPs each one skips."""

    den = get_denoiser(pipe)
    units = cache_units(den)
    shares = compute_shares(den, units)
    return [u.to_dict() | {"share": shares[u.name]} for u in units]


def _solve_with_cache(args, prof, prof_path, config: SolveConfig) -> int:
    """solve --full-computations K | --speedup X: formats and cache schedule in one plan (mpsearch.allocation.joint)."""

    if config.decoupled:
        raise UsageError("a cache schedule solves the local objective; --objective-weights, --max-damage and "
                         "--fp-act-windows do not combine with --full-computations/--speedup: run them separately")
    if args.full_computations is not None and not 1 <= args.full_computations <= prof.steps:
        raise UsageError(f"--full-computations must be an integer in 1..{prof.steps} (the profile's steps), got "
                         f"{args.full_computations}; pass e.g. --full-computations {max(1, prof.steps // 2)}")
    from mpsearch.allocation.joint import solve_joint  # lazy: not needed to read a profile or solve

    pipe = pipeline_for(args.model, profile=prof)
    plan = solve_joint(prof, pipe, full_computations=args.full_computations, speedup=args.speedup,
                       method=args.cache_method, unit=args.cache_unit, warmup=args.warmup,
                       max_reuse=args.max_reuse, rounds=args.rounds, config=config)
    slug = f"{budget_slug(args.budget)}-{args.cache_method}{sum(plan.cache['compute'])}"
    out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}.yaml"
    plan.save(out)
    counts, c = plan.format_counts(), plan.predictions["cache"]
    data = {"plan": str(out), "budget": plan.budget, "bytes": plan.predicted_bytes, "formats": counts,
            "objective": plan.predictions.get("objective"), "solver": plan.provenance.get("solver"),
            "status": plan.provenance.get("status"), "cache": plan.cache, "cache_predictions": c,
            "rounds": plan.provenance.get("cache_rounds")}
    pattern = "".join("C" if x else "." for x in plan.cache["compute"])
    return emit(args, data, [
        f"plan {out}: {format_bytes(plan.predicted_bytes)} ({plan.predicted_bytes:,} B) <= budget {args.budget}; "
        + ", ".join(f"{k}: {v}" for k, v in counts.items()),
        f"cache ({plan.cache['method']}, unit {plan.cache['unit']['name']}): {c['full_computations']}/{c['steps']} "
        f"steps computed {pattern}; predicted error {c['predicted_error']:.4g}; ideal speedup "
        f"{c['ideal_speedup'] if c['ideal_speedup'] is not None else '?'}x"])

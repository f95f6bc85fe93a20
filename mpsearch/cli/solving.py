"""`mpsearch solve`: one budget, budget sweeps and Pareto fronts, compute budgets, the Optuna search, cache
schedules, and role-based plans for named architectures."""

from __future__ import annotations

from pathlib import Path

from mpsearch.errors import UsageError
from mpsearch.cli.common import _budget_slug, _emit, _table
from mpsearch.allocation.compute import compute_problem, parse_compute, record_layer_calls
from mpsearch.allocation.joint import solve_joint
from mpsearch.allocation.pareto import pareto
from mpsearch.allocation.refine import default_storage, refine
from mpsearch.allocation.solvers import get_solver
from mpsearch.allocation.solving import build_problem, parse_pins, solve
from mpsearch.archs import plan_without_weights
from mpsearch.budget import format_bytes, parse_budget
from mpsearch.cache_units import cache_units, compute_shares
from mpsearch.models import get_denoiser
from mpsearch import pipeline

from mpsearch.plan import Plan
from mpsearch.profiling.profiler import default_profile_path
from mpsearch.profiling.store import Profile


def cmd_solve(args) -> int:

    if args.budget is None and args.pareto is None:
        raise UsageError("solve needs --budget (e.g. 60%, 600KB, or a sweep 400KB:900KB:50KB) or --pareto N")
    if args.compute_cost is not None and not args.compute:
        raise UsageError(f"--compute-cost {args.compute_cost} prices a compute budget: give one too, e.g. --compute 50%")
    if args.pareto is not None or ":" in args.budget or args.search != "ilp" or args.compute:
        return _solve_search_modes(args)
    parse_budget(args.budget, fp_bytes=1, quantizable_numel=1)  # a malformed budget fails before any work
    if args.arch:
        return _solve_arch(args)
    prof_path = Path(args.profile) if args.profile else default_profile_path()
    prof = Profile.load(prof_path)
    if args.cache_steps is not None or args.speedup is not None:
        return _solve_with_cache(args, prof, prof_path)
    plan = solve(prof, args.budget, metric=args.metric, solver=args.solver, pins=args.pin, tie=args.tie,
                 role_pins={} if args.no_default_pins else None, weights=args.weights,
                 max_damage=args.max_damage, fp_act_windows=args.fp_act_windows)
    out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{_budget_slug(args.budget)}.yaml"
    plan.save(out)
    counts = plan.format_counts()
    data = {"plan": str(out), "budget": plan.budget, "bytes": plan.predicted_bytes, "formats": counts,
            "objective": plan.predictions.get("objective"), "solver": plan.provenance.get("solver"),
            "status": plan.provenance.get("status"), "seconds": plan.provenance.get("seconds")}
    return _emit(args, data, [f"plan {out}: {format_bytes(plan.predicted_bytes)} ({plan.predicted_bytes:,} B) "
                              f"<= budget {args.budget} ({plan.budget['bytes']:,} B); "
                              + ", ".join(f"{k}: {v}" for k, v in counts.items())
                              + f"; objective {plan.predictions.get('objective'):.4g} ({plan.provenance.get('status')})"])


def _solve_search_modes(args) -> int:
    """solve --budget START:STOP:STEP | --pareto N | --compute C | --search optuna (mpsearch.allocation.pareto, .compute,
    .refine)."""

    if args.arch or args.cache_steps is not None or args.speedup is not None:
        raise UsageError("--pareto, budget ranges, --compute and --search optuna do not combine with --arch or a "
                         "cache schedule; run them separately")
    sweeping = args.pareto is not None or (args.budget is not None and ":" in args.budget)
    if sweeping and args.search != "ilp":
        raise UsageError("--search optuna refines one budget; give a single --budget, not a sweep")
    prof_path = Path(args.profile) if args.profile else default_profile_path()
    prof = Profile.load(prof_path)
    role_pins = {} if args.no_default_pins else None
    base = build_problem(prof, None, metric=args.metric, pins=args.pin, tie=args.tie, role_pins=role_pins)
    problem, decode, pipe, compute_info, cm, latency = base, None, None, None, None, None
    if args.compute:

        if args.compute_cost == "latency":
            latency = prof.latency()
            if latency is None:
                raise UsageError(f"profile {prof_path} has no latency table for --compute-cost latency; measure one on "
                                 f"this machine with `mpsearch profile --latency --out {prof_path}` (it keeps the "
                                 "profile's measurements)")
        parse_compute(args.compute, 1.0, "s" if latency is not None else "bops")  # malformed: fail before any work
        pipe = pipeline.load_pipeline(args.model)
        calls = record_layer_calls(pipe, prof.info, steps=prof.steps, windows=args.act_windows,
                                   formats=prof.formats[1:])
        cm = compute_problem(prof, base, calls, args.compute, metric=args.metric,
                             cost=latency if latency is not None else "bops")
        problem, decode = cm.problem, cm.decode
        compute_info = {"cost": cm.kind, "unit": cm.unit, "limit": cm.limit, "full": cm.full, "windows": cm.windows}
        if cm.kind == "bops":
            compute_info.update(limit_bops=cm.limit, full_bops=cm.full)
        else:
            compute_info.update({k: cm.info.get(k) for k in ("device", "torch", "threads", "measured_at")})
    slug = _budget_slug(args.budget or f"pareto{args.pareto}") + (f"-c{_budget_slug(args.compute)}" if args.compute else "")
    if sweeping:

        out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}"
        r = pareto(prof, None if args.pareto is not None else args.budget, n=args.pareto, metric=args.metric,
                   solver=args.solver, pins=args.pin, tie=args.tie, role_pins=role_pins, out=out,
                   progress=not args.json, problem=problem, decode=decode)
        points = [p.to_dict() for p in r["points"]]
        data = {"folder": str(out), "files": r["files"], "points": points, "uniform": r["uniform"],
                "compute": compute_info}
        lines = _table([[format_bytes(p["budget_bytes"]), p["status"],
                         "-" if p["total_bytes"] is None else format_bytes(p["total_bytes"]),
                         "-" if p["objective"] is None else f"{p['objective']:.4g}", "*" if p["on_frontier"] else ""]
                        for p in points], ["budget", "status", "bytes", "objective", "frontier"])
        return _emit(args, data, lines + [f"wrote {', '.join(r['files'].values())} and {sum(1 for p in points if p['plan'])} "
                                          f"plans under {out}/plans"])
    if args.search == "optuna":

        pipe = pipe or pipeline.load_pipeline(args.model)
        storage = args.storage or default_storage(prof_path)
        plan, report = refine(prof, pipe, args.budget, trials=args.trials, metric=args.metric, pins=args.pin,
                              tie=args.tie, role_pins=role_pins, storage=storage, sampler=args.sampler,
                              seeds=tuple(args.search_seeds), steps=args.search_steps, progress=not args.json,
                              problem=problem, decode=decode)
        slug += "-optuna"
    else:

        b = parse_budget(args.budget, fp_bytes=prof.info.fp_bytes, fixed_bytes=prof.info.fixed_bytes,
                         quantizable_numel=prof.info.quantizable_numel)
        sol = get_solver(args.solver).solve(problem.with_budget(b.bytes))
        assignment, overrides = decode(sol.choice)
        plan = Plan.from_assignment(
            prof.info, assignment, budget=b.to_dict(), weights=prof.weights, overrides=overrides,
            predictions={"objective": float(sol.objective), "metric": args.metric},
            provenance={"solver": sol.solver, "status": sol.status, "seconds": round(float(sol.seconds), 4),
                        "metric": args.metric, "tie": bool(args.tie), "pins": parse_pins(args.pin),
                        "profile_digest": prof.digest})
        report = None
    if cm is not None:  # which compute cost priced the plan, and what it predicts
        choice = cm.encode(plan.layers, plan.overrides)
        plan.predictions.update(cm.predictions(choice))
        plan.provenance.update(compute=args.compute, compute_cost=cm.kind)
        if latency is not None:
            plan.provenance["latency"] = {"device": latency.device, **{k: latency.meta.get(k) for k in
                                                                       ("torch", "threads", "measured_at")}}
        compute_info["predicted"] = cm.value(choice)
    out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}.yaml"
    plan.save(out)
    counts = plan.format_counts()
    data = {"plan": str(out), "budget": plan.budget, "bytes": plan.predicted_bytes, "formats": counts,
            "objective": plan.predictions.get("objective"), "solver": plan.provenance.get("solver"),
            "status": plan.provenance.get("status"), "overrides": len(plan.overrides), "compute": compute_info,
            "search": report}
    lines = [f"plan {out}: {format_bytes(plan.predicted_bytes)} ({plan.predicted_bytes:,} B); "
             + ", ".join(f"{k}: {v}" for k, v in counts.items())
             + (f"; {len(plan.overrides)} fp-activation windows" if plan.overrides else "")]
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
    return _emit(args, data, lines)


def _solve_arch(args) -> int:
    """solve --arch: what can be planned without weights (feasibility, uniform and role-based plans)."""

    if args.profile:
        raise UsageError("give either --arch (plan without weights) or --profile (plan from measurements), not both")
    r = plan_without_weights(args.arch, args.budget, dtype=args.dtype, role_pins={} if args.no_default_pins else None)
    info, assignment = r.pop("info"), r.pop("assignment")
    lines = [f"{args.arch} ({r['class']}) under {args.budget} ({r['budget']['bytes']:,} B), without weights:",
             f"feasible: {'yes' if r['feasible'] else 'no'} (smallest possible {format_bytes(r['min_bytes'])}, "
             f"unquantized {format_bytes(r['fp_bytes'])})", ""]
    lines += _table([[f, format_bytes(u["bytes"]), "fits" if u["fits"] else "-"] for f, u in r["uniform"].items()],
                    ["uniform plan", "size", ""])
    lines += [""] + _table([[s["step"], format_bytes(s["bytes"]), "fits" if s["fits"] else "-"] for s in r["role_ladder"]],
                           ["role-based plan", "size", ""])
    r["plan"] = None
    if assignment is not None:
        plan = Plan.from_assignment(info, assignment, budget=r["budget"],
                                    provenance={"solver": "role-ladder", "arch": args.arch, "status": "no profile",
                                                "role_pins": r["role_pins"], "step": r["role_plan"]["step"]})
        out = Path(args.out) if args.out else Path("plans") / f"{args.arch}-roles-{_budget_slug(args.budget)}.yaml"
        plan.save(out)
        r["plan"] = str(out)
        lines += ["", f"role-based plan: {r['role_plan']['step']} -> {format_bytes(r['role_plan']['bytes'])}, "
                      f"written to {out}"]
    else:
        lines += ["", "no role-based plan fits this budget" + (" with the default pins (try --no-default-pins)"
                                                              if r["feasible"] and not args.no_default_pins else "")]
    lines += [f"needs a profile: {r['needs_profile']}"]
    return _emit(args, r, lines)


def _cache_units(pipe) -> list[dict]:
    """inspect: the cacheable units (mpsearch.cache_units) with the share of a step's FLOPs each one skips."""

    den = get_denoiser(pipe)
    units = cache_units(den)
    shares = compute_shares(den, units)
    return [u.to_dict() | {"share": shares[u.name]} for u in units]


def _solve_with_cache(args, prof, prof_path) -> int:
    """solve --cache-steps K | --speedup X: formats and cache schedule in one plan (mpsearch.allocation.joint)."""

    options = {"role_pins": {}} if getattr(args, "no_default_pins", False) else {}
    pipe = pipeline.load_pipeline(args.model)
    plan = solve_joint(prof, pipe, args.budget, full_computations=args.cache_steps, speedup=args.speedup,
                       method=args.cache_method, unit=args.cache_unit, warmup=args.warmup,
                       max_reuse=args.max_reuse, rounds=args.rounds, metric=args.metric, solver=args.solver,
                       pins=args.pin, tie=args.tie, **options)
    slug = f"{_budget_slug(args.budget)}-{args.cache_method}{sum(plan.cache['compute'])}"
    out = Path(args.out) if args.out else Path("plans") / f"{prof_path.stem}-{slug}.yaml"
    plan.save(out)
    counts, c = plan.format_counts(), plan.predictions["cache"]
    data = {"plan": str(out), "budget": plan.budget, "bytes": plan.predicted_bytes, "formats": counts,
            "objective": plan.predictions.get("objective"), "solver": plan.provenance.get("solver"),
            "status": plan.provenance.get("status"), "cache": plan.cache, "cache_predictions": c,
            "rounds": plan.provenance.get("cache_rounds")}
    pattern = "".join("C" if x else "." for x in plan.cache["compute"])
    return _emit(args, data, [
        f"plan {out}: {format_bytes(plan.predicted_bytes)} ({plan.predicted_bytes:,} B) <= budget {args.budget}; "
        + ", ".join(f"{k}: {v}" for k, v in counts.items()),
        f"cache ({plan.cache['method']}, unit {plan.cache['unit']['name']}): {c['full_computations']}/{c['steps']} "
        f"steps computed {pattern}; predicted error {c['predicted_error']:.4g}; ideal speedup "
        f"{c['ideal_speedup'] if c['ideal_speedup'] is not None else '?'}x"])

"""`mpsearch` command line: a thin argparse layer over library functions that return data.

Every command that produces a result takes ``--json`` and then prints one JSON object on stdout.
Errors print one line on stderr: exit code 2 for usage errors, 1 for failures; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from . import __version__
from .errors import MpsearchError, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`)")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return vals


def _str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected i/n (e.g. 0/2), got {text!r}") from None
    return i, n


def read_prompts(path) -> list[str]:
    """Prompts from a text file: one per line; blank lines and lines starting with '#' are skipped."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read the prompts file {p} ({e.strerror or e}); give a text file, one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise UsageError(f"the prompts file {p} has no prompts; write one prompt per line")
    return prompts


def _conditions(args) -> list:
    """The prompts (--prompts FILE) if given, else the class labels."""
    return read_prompts(args.prompts) if getattr(args, "prompts", None) else list(args.labels)


def _emit(args, data: dict, lines: list[str]) -> int:
    if args.json:
        print(json.dumps(data, default=str))
    else:
        print("\n".join(lines))
    return 0


def _table(rows: list[list], header: list[str]) -> list[str]:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return [fmt(cells[0]), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells[1:]]


# ---------------------------------------------------------------- commands

def cmd_inspect(args) -> int:
    from .budget import format_bytes
    from .formats import available_formats
    from .models import describe
    from .pipeline import load_pipeline

    if args.arch:
        return _inspect_arch(args)
    info = describe(load_pipeline(args.model))
    lo, hi = info.size_range()
    uniform = {f: info.bytes_for({l.name: f for l in info.layers if f in l.eligible}) for f in available_formats()}
    data = {"model": args.model, "class": info.denoiser_class, "fingerprint": info.fingerprint,
            "layers": [l.to_dict() | {"numel": l.numel} for l in info.layers], "fixed_bytes": info.fixed_bytes,
            "fp_bytes": info.fp_bytes, "uniform_bytes": uniform, "min_bytes": lo, "max_bytes": hi,
            "tie_groups": [list(g) for g in info.tie_groups], "cacheable_blocks": list(info.blocks)}
    data["cache_units"] = _cache_units(load_pipeline(args.model))
    rows = [[l.name, l.kind, "x".join(map(str, l.shape)), l.role.value, ",".join(l.eligible)] for l in info.layers]
    lines = [f"{info.denoiser_class} ({args.model}), {len(info.layers)} candidate layers, fingerprint {info.fingerprint}"]
    lines += _table(rows, ["layer", "kind", "shape", "role", "eligible"])
    lines += ["", f"fixed (never quantized): {format_bytes(info.fixed_bytes)}"]
    lines += [f"uniform {f:6s}: {format_bytes(b)} ({b:,} B)" for f, b in uniform.items()]
    lines += [f"smallest possible: {format_bytes(lo)} ({lo:,} B); largest: {format_bytes(hi)} ({hi:,} B)"]
    lines += [f"cache unit {u['name']} ({u['kind']}: {', '.join(u['modules'])}): "
              + (f"{u['share']:.0%} of a step's FLOPs" if u["share"] is not None else "share of compute unknown")
              for u in data["cache_units"]]
    return _emit(args, data, lines)


def _inspect_arch(args) -> int:
    from .archs import arch_report
    from .budget import format_bytes

    r = arch_report(args.arch, dtype=args.dtype)
    lines = [f"{r['title']} ({r['arch']}): {r['class']}, {r['params']:,} parameters, {r['dtype']}, "
             f"{r['layers']} candidate layers; built on the meta device from {r['source']}", ""]
    lines += _table([[f, format_bytes(b), f"{b:,}"] for f, b in r["uniform_bytes"].items()],
                    ["uniform", "size", "bytes"])
    lines += ["", f"smallest possible: {format_bytes(r['min_bytes'])}; with the default pins: "
              f"{format_bytes(r['min_bytes_default_pins'])}; largest: {format_bytes(r['max_bytes'])}", ""]
    lines += _table([[b["budget"], "yes" if b["feasible"] else "no", "yes" if b["feasible_default_pins"] else "no",
                      "yes" if b["fits_fp"] else "no"] for b in r["budgets"]],
                    ["budget", "feasible", "with default pins", "fits unquantized"])
    lines += [""] + _table([[role, v["layers"], f"{v['params']:,}", format_bytes(v["fp_bytes"])]
                            for role, v in sorted(r["roles"].items(), key=lambda kv: -kv[1]["params"])],
                           ["role", "layers", "params", "size"])
    return _emit(args, r, lines)


def cmd_generate(args) -> int:
    import numpy as np
    from PIL import Image

    from .executor import apply_plan
    from .generation import generate
    from .io import atomic_write_bytes
    from .models import measured_bytes
    from .pipeline import load_pipeline
    from .plan import Plan

    plan = Plan.load(args.plan) if args.plan else None
    pipe = load_pipeline(args.model)
    handle = apply_plan(pipe, plan, check_weights=not args.ignore_weights) if plan else None
    try:
        t0 = time.perf_counter()
        conditions = _conditions(args)
        images = generate(pipe, conditions, args.seed, args.steps, args.guidance, args.size)
        seconds = time.perf_counter() - t0
        nbytes = measured_bytes(pipe)
    finally:
        if handle:
            handle.remove()
    out = Path(args.out)
    paths = []
    import io as _io

    for i, (label, img) in enumerate(zip(conditions, images)):
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
    return _emit(args, data, [f"wrote {len(paths)} images to {out} ({seconds:.2f} s, denoiser {nbytes:,} B)"])


_PROFILE_DEFAULTS = {"formats": ["int8", "nvfp4", "int4"], "steps": 20, "labels": list(range(10)), "seeds": [0, 1]}
_PROFILE_CONFIG_FLAGS = ("formats", "steps", "labels", "seeds", "guidance", "prompts", "size")


def _profile_config(args, out):
    """The profile's configuration: from the options; with ``--latency`` and no configuration option on an
    existing profile file, the file's own (so a latency table is added without repeating its options)."""
    from .profile_store import stored_config
    from .profiler import ProfileConfig

    given = [f for f in _PROFILE_CONFIG_FLAGS if getattr(args, f) is not None]
    if args.latency and not given:
        stored = stored_config(out)
        if stored is not None:
            return ProfileConfig(**stored)
    value = lambda name: getattr(args, name) if getattr(args, name) is not None else _PROFILE_DEFAULTS[name]  # noqa: E731
    return ProfileConfig(labels=tuple(value("labels")), seeds=tuple(value("seeds")), steps=value("steps"),
                         guidance_scale=args.guidance, formats=tuple(value("formats")),
                         prompts=tuple(read_prompts(args.prompts)) if args.prompts else (), size=args.size)


def _latency_lines(summary: dict) -> list[str]:
    totals = summary["totals"]
    shares = ", ".join(f"{name} {t['vs_fp']:.2f}x" for name, t in totals.items()
                       if name != "fp" and t["vs_fp"] is not None)
    return [f"latency on {summary['device']} (torch {summary['torch']}, {summary['threads']} threads, measured "
            f"{summary['measured_at']}): fp {summary['fp_seconds'] * 1e3:.3f} ms per denoiser call over "
            f"{summary['layers']} layers; vs fp on the layers that take them: {shares}"]


def cmd_profile(args) -> int:
    from .pipeline import load_pipeline
    from .profiler import default_profile_path, profile

    out = Path(args.out) if args.out else default_profile_path(args.model)
    if args.end_to_end and args.shard != (0, 1):
        raise UsageError("--end-to-end needs the whole local profile: merge the shards first, then run "
                         "`mpsearch profile --end-to-end --out MERGED` with the same options")
    if args.latency and args.shard != (0, 1):
        raise UsageError("--latency measures the whole model on this machine: merge the shards first, then run "
                         "`mpsearch profile --latency --out MERGED`")
    config = _profile_config(args, out)
    pipe = load_pipeline(args.model)
    t0 = time.perf_counter()
    prof = profile(pipe, config, out=out, shard=args.shard, progress=not args.json, end_to_end=args.end_to_end,
                   shortlist=args.shortlist, windows=args.windows)
    if args.latency:
        from .latency import measure_latency
        from .profile_store import write_latency

        table = measure_latency(pipe, prof.info, formats=prof.formats, steps=config.steps,
                                conditions=list(config.conditions), seed=config.seeds[0],
                                guidance_scale=config.guidance_scale, size=config.size,
                                min_time=args.latency_min_time, progress=not args.json)
        write_latency(out, table)
    seconds = time.perf_counter() - t0
    data = {"profile": str(out), "model": args.model, "class": prof.info.denoiser_class, "layers": len(prof.info.layers),
            "formats": list(prof.formats), "steps": prof.steps, "units_done": len(prof.units),
            "units_total": len(config.seeds), "seconds": seconds, "digest": prof.digest}
    lines = [f"profile {out}: {len(prof.info.layers)} layers x {len(prof.formats)} formats x "
             f"{prof.steps} steps, {len(prof.units)}/{len(config.seeds)} units ({seconds:.1f} s)"]
    if prof.end_to_end is not None:
        e = prof.end_to_end
        data.update(end_to_end=e, cost_ratio=e["cost_ratio"], spearman=e["spearman"])
        lines += [f"end to end: {e['units']} units ({len(e['shortlist'])} layer/format pairs, {len(e['windows'])} "
                  f"step windows) = {e['cost_ratio']:.1%} of the exhaustive {e['exhaustive_units']}",
                  "spearman (local vs end to end): " + ", ".join(
                      f"{m} {v['rho']:+.2f}" if v["rho"] is not None else f"{m} n/a" for m, v in e["spearman"].items())]
    table = prof.latency()
    data["latency"] = table.summary() if table is not None else None
    if table is not None:
        lines += _latency_lines(data["latency"]) + ([] if args.latency else [
            "(the latency table was measured earlier; --latency measures it again on this machine)"])
    return _emit(args, data, lines)


def cmd_profile_merge(args) -> int:
    from .profile_store import merge_profiles

    prof = merge_profiles(args.shards, args.out)
    total = len(prof.config.get("seeds", ()))
    table = prof.latency()
    data = {"profile": str(args.out), "inputs": list(args.shards), "units_done": len(prof.units),
            "units_total": total, "digest": prof.digest, "latency": table.summary() if table is not None else None}
    lines = [f"profile {args.out}: merged {len(args.shards)} files, {len(prof.units)}/{total} units, digest {prof.digest}"]
    if table is not None:
        lines += [f"latency table carried over: measured on {table.device} at {table.meta.get('measured_at')} (the "
                  "latest of the inputs')"]
    return _emit(args, data, lines)


def _budget_slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in spec.replace("%", "pct"))


def cmd_solve(args) -> int:
    from .budget import format_bytes, parse_budget
    from .profile_store import Profile
    from .profiler import default_profile_path
    from .solve import solve

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
    """solve --budget START:STOP:STEP | --pareto N | --compute C | --search optuna (mpsearch.pareto, .compute,
    .refine)."""
    from .budget import format_bytes
    from .profile_store import Profile
    from .profiler import default_profile_path
    from .solve import build_problem

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
        from .compute import compute_problem, parse_compute, record_layer_calls
        from .pipeline import load_pipeline

        if args.compute_cost == "latency":
            latency = prof.latency()
            if latency is None:
                raise UsageError(f"profile {prof_path} has no latency table for --compute-cost latency; measure one on "
                                 f"this machine with `mpsearch profile --latency --out {prof_path}` (it keeps the "
                                 "profile's measurements)")
        parse_compute(args.compute, 1.0, "s" if latency is not None else "bops")  # malformed: fail before any work
        pipe = load_pipeline(args.model)
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
        from .pareto import pareto

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
        from .pipeline import load_pipeline
        from .refine import default_storage, refine

        pipe = pipe or load_pipeline(args.model)
        storage = args.storage or default_storage(prof_path)
        plan, report = refine(prof, pipe, args.budget, trials=args.trials, metric=args.metric, pins=args.pin,
                              tie=args.tie, role_pins=role_pins, storage=storage, sampler=args.sampler,
                              seeds=tuple(args.search_seeds), steps=args.search_steps, progress=not args.json,
                              problem=problem, decode=decode)
        slug += "-optuna"
    else:
        from .budget import parse_budget
        from .plan import Plan
        from .solve import parse_pins
        from .solver import get_solver

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
    return _emit(args, data, lines)


def _solve_arch(args) -> int:
    """solve --arch: what can be planned without weights (feasibility, uniform and role-based plans)."""
    from .archs import plan_without_weights
    from .budget import format_bytes
    from .plan import Plan

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
    """inspect: the cacheable units (mpsearch.cache.units) with the share of a step's FLOPs each one skips."""
    from .cache import cache_units, compute_shares
    from .models import get_denoiser

    den = get_denoiser(pipe)
    units = cache_units(den)
    shares = compute_shares(den, units)
    return [u.to_dict() | {"share": shares[u.name]} for u in units]


def _solve_with_cache(args, prof, prof_path) -> int:
    """solve --cache-steps K | --speedup X: formats and cache schedule in one plan (mpsearch.cache.joint)."""
    from .budget import format_bytes
    from .cache.joint import solve_joint
    from .pipeline import load_pipeline

    options = {"role_pins": {}} if getattr(args, "no_default_pins", False) else {}
    pipe = load_pipeline(args.model)
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


def cmd_eval(args) -> int:
    from .classifier import load_classifier
    from .evaluate import evaluate_plan
    from .pipeline import load_pipeline
    from .plan import Plan

    pipe = load_pipeline(args.model)
    plan = Plan.load(args.plan) if args.plan else None
    conditions = _conditions(args)
    text = bool(args.prompts)  # the bundled classifier knows the digits only
    scores = evaluate_plan(pipe, plan, labels=tuple(conditions), seeds=tuple(args.seeds), steps=args.steps,
                           classifier=None if text else load_classifier())
    data = {"plan": args.plan, **scores}
    return _emit(args, data, [f"{k}: {v:.6g}" if isinstance(v, float) else f"{k}: {v}" for k, v in data.items()])


def cmd_demo(args) -> int:
    from .demo import run_demo

    result = run_demo(model=args.model, progress=not args.json)
    return _emit(args, result, result.pop("lines") if not args.json else [])


def cmd_report(args) -> int:
    from .profiler import default_profile_path
    from .report import report

    profile = args.profile
    if profile is None and default_profile_path(args.model).is_file():
        profile = default_profile_path(args.model)
    log = None if args.json else (lambda msg: print(f"report: {msg}", file=sys.stderr))
    r = report(profile, args.plan or [], None if args.no_images else args.model, out=args.out,
               labels=_conditions(args), seed=args.seed, steps=args.steps, metric=args.metric, points=args.points,
               log=log)
    data = {"folder": r["folder"], "index": r["index"], "files": r["files"],
            "profile": str(profile) if profile else None, "variants": [v.to_dict() for v in r["data"].variants]}
    lines = [f"report {r['index']}: {len(r['files'])} files"] + [f"note: {n}" for n in r["data"].notes]
    return _emit(args, data, lines)


# ---------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mpsearch", description="Mixed-precision bit allocation and cache scheduling for diffusers models.")
    p.add_argument("--version", action="version", version=f"mpsearch {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    def add(name, fn, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.set_defaults(fn=fn)
        sp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        sp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
        return sp

    model_help = "'default' (DiT), 'default-unet', or a local diffusers pipeline folder"
    sp = add("inspect", cmd_inspect, "list a denoiser's quantizable layers, roles and sizes per format")
    sp.add_argument("--model", default="default", help=model_help)
    arch_help = "a real architecture, built without weights: sd15, sdxl, pixart-sigma, sd3-medium, flux-dev, ..."
    sp.add_argument("--arch", help=arch_help)
    sp.add_argument("--dtype", help="with --arch: float16, bfloat16 or float32 (default: the model's own)")

    sp = add("generate", cmd_generate, "generate images, optionally with a plan applied")
    sp.add_argument("--model", default="default", help=model_help)
    sp.add_argument("--plan", help="plan YAML to apply")
    sp.add_argument("--ignore-weights", action="store_true",
                    help="apply the plan even if the model's weights differ from those it was made from")
    sp.add_argument("--labels", type=_int_list, default=list(range(10)), help="comma-separated class labels")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    sp.add_argument("--prompts", metavar="FILE", help="text prompts, one per line (text-to-image pipelines)")
    sp.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the pipeline's)")
    sp.add_argument("--out", default="out", help="folder for the PNGs")

    sp = add("profile", cmd_profile, "measure per-layer, per-format, per-step sensitivity (local tier)")
    sp.add_argument("--model", default="default", help=model_help)
    sp.add_argument("--out", help="profile file (default profiles/<model>.sqlite); an existing one is resumed")
    sp.add_argument("--formats", type=_str_list, default=None, help="default int8,nvfp4,int4")
    sp.add_argument("--steps", type=int, default=None, help="default 20")
    sp.add_argument("--labels", type=_int_list, default=None, help="default 0,...,9")
    sp.add_argument("--seeds", type=_int_list, default=None, help="default 0,1")
    sp.add_argument("--guidance", type=float, default=None)
    sp.add_argument("--prompts", metavar="FILE", help="text prompts, one per line (replaces --labels)")
    sp.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the pipeline's)")
    sp.add_argument("--shard", type=_shard, default=(0, 1), help="measure only shard i of n (i/n)")
    sp.add_argument("--end-to-end", action="store_true",
                    help="then measure a shortlist of layers and step windows end to end (content/quality metrics)")
    sp.add_argument("--shortlist", type=int, default=8, metavar="N", help="with --end-to-end: layers measured alone")
    sp.add_argument("--windows", type=int, default=4, metavar="K", help="with --end-to-end: step windows measured")
    sp.add_argument("--latency", action="store_true",
                    help="then time every layer in every format on this machine (a latency table for solve "
                    "--compute-cost latency), stored in the profile, replacing any there; on an existing profile "
                    "file without configuration options, the file's configuration is used")
    sp.add_argument("--latency-min-time", type=float, default=0.05, metavar="S",
                    help="with --latency: least run time of each timing, seconds (default 0.05)")
    merge = sp.add_subparsers(dest="profile_command", parser_class=_Parser, metavar="merge")
    help_ = "merge shard files (--shard i/n) of one profile into one file, atomically"
    mp = merge.add_parser("merge", help=help_, description=help_)
    mp.set_defaults(fn=cmd_profile_merge)
    mp.add_argument("shards", nargs="+", metavar="FILE", help="profile files made with --shard i/n")
    mp.add_argument("--out", required=True, help="the merged profile file")
    mp.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    mp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    sp = add("solve", cmd_solve, "allocate a format per layer under a memory budget; writes a plan")
    sp.add_argument("--budget", help="e.g. 600KB, 4GB, 4GiB, 60%%, 4.5bits; START:STOP:STEP sweeps a Pareto frontier")
    sp.add_argument("--profile", help="profile file (default profiles/default.sqlite)")
    sp.add_argument("--metric", default="auto", help="auto (gn where the profile has it, else rel_mse), gn, rel_mse, sqnr or cosine")
    sp.add_argument("--solver", default="ilp", help="ilp (CBC), highs, greedy")
    sp.add_argument("--pin", action="append", default=None, metavar="REGEX=FORMAT", help="keep matching layers in a format")
    sp.add_argument("--tie", action="store_true", help="layers that read one input (q/k/v) share a format")
    sp.add_argument("--weights", metavar="content=1,quality=1",
                    help="decoupled end-to-end objective (needs `profile --end-to-end`): weights per kind or metric")
    sp.add_argument("--max-damage", type=float, metavar="F",
                    help="minimax: rule out any layer/format whose end-to-end damage exceeds F x the largest")
    sp.add_argument("--fp-act-windows", type=int, default=0, metavar="K",
                    help="keep activations fp in the K most damaging measured step windows (W4A4/W8A8 layers)")
    cache = sp.add_mutually_exclusive_group()
    cache.add_argument("--cache-steps", type=int, metavar="K", help="also schedule a feature cache: K full computations")
    cache.add_argument("--speedup", type=float, metavar="X", help="also schedule a feature cache for an ideal speedup X")
    sp.add_argument("--cache-method", default="dp", choices=("dp", "uniform", "threshold"), help="cache scheduler")
    sp.add_argument("--cache-unit", help="cacheable unit (default: the largest; see `mpsearch inspect`)")
    sp.add_argument("--model", default="default", help="with a cache: the pipeline the reuse costs are measured on")
    sp.add_argument("--warmup", type=int, default=2, help="with a cache: first steps always computed")
    sp.add_argument("--max-reuse", type=int, default=None, help="with a cache: at most this many reuses in a row")
    sp.add_argument("--rounds", type=int, default=2, help="with a cache: solve/schedule rounds")
    sp.add_argument("--no-default-pins", action="store_true",
                    help="do not pin fragile layers by role (embedders, first/last projections: fp; AdaLN: int8)")
    sp.add_argument("--arch", help="plan without weights for a real architecture (" + arch_help.split(": ")[1] + ")")
    sp.add_argument("--dtype", help="with --arch: float16, bfloat16 or float32 (default: the model's own)")
    sp.add_argument("--out", help="plan path (default plans/<profile>-<budget>.yaml); a folder for a sweep")
    sp.add_argument("--pareto", type=int, metavar="N", help="sweep N budgets from the smallest feasible to full "
                    "precision; writes frontier.csv/.json/.png and one plan per point into --out")
    sp.add_argument("--compute", metavar="C", help="compute budget beside memory: 50%% of full precision, or bit "
                    "operations (or, with --compute-cost latency, seconds: 12ms) per denoiser call; activation "
                    "precision per step window becomes a choice (--act-windows)")
    sp.add_argument("--act-windows", type=int, default=2, metavar="W", help="with --compute: step windows (default 2)")
    sp.add_argument("--compute-cost", choices=("bops", "latency"), default=None,
                    help="with --compute: price compute in bit operations (bops, the default) or in the seconds of "
                    "the profile's latency table (`mpsearch profile --latency`); --compute then also takes 12ms")
    sp.add_argument("--search", default="ilp", choices=("ilp", "optuna"),
                    help="optuna: refine the ILP's plans with real generations (--trials)")
    sp.add_argument("--trials", type=int, default=30, help="with --search optuna: finished trials to reach")
    sp.add_argument("--storage", help="with --search optuna: SQLAlchemy URL of the study (default "
                    "sqlite:///studies/<profile>.db); share it to run workers on several machines")
    sp.add_argument("--sampler", default="nsga2", choices=("nsga2", "tpe"), help="with --search optuna")
    sp.add_argument("--search-steps", type=int, default=8, help="with --search optuna: denoising steps per trial")
    sp.add_argument("--search-seeds", type=_int_list, default=[500], help="with --search optuna: seeds per trial")

    sp = add("eval", cmd_eval, "score a plan against full precision on held-out seeds")
    sp.add_argument("--model", default="default", help=model_help)
    sp.add_argument("--plan", help="plan YAML (omit for full precision)")
    sp.add_argument("--labels", type=_int_list, default=list(range(10)))
    sp.add_argument("--seeds", type=_int_list, default=[1000, 1001])
    sp.add_argument("--prompts", metavar="FILE", help="text prompts, one per line (replaces --labels)")
    sp.add_argument("--steps", type=int, default=20)

    sp = add("demo", cmd_demo, "the whole flow on the embedded default: profile, solve, compare with uniform formats")
    sp.add_argument("--model", default="default", help="default or default-unet")

    sp = add("report", cmd_report, "write an HTML page with figures: sensitivity, Pareto frontier, plans, cache, images")
    sp.add_argument("--profile", help="profile file (default profiles/<model>.sqlite if it exists)")
    sp.add_argument("--plan", action="extend", nargs="+", metavar="PLAN", help="plan YAML files to show")
    sp.add_argument("--model", default="default", help=model_help + "; images are generated with it")
    sp.add_argument("--out", default="report", help="folder for index.html and its PNGs (an older report there "
                    "is replaced)")
    sp.add_argument("--labels", type=_int_list, default=list(range(10)), help="class labels of the image grid")
    sp.add_argument("--prompts", metavar="FILE", help="text prompts, one per line (replaces --labels)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, default=None, help="denoising steps (default: the plans' cache schedule, "
                    "else 20)")
    sp.add_argument("--metric", default="auto", help="auto, gn, rel_mse, sqnr or cosine: the frontier's objective")
    sp.add_argument("--points", type=int, default=12, help="budgets on the Pareto frontier (0: no frontier)")
    sp.add_argument("--no-images", action="store_true", help="skip the image grid (no generation)")
    return p


@contextlib.contextmanager
def _quiet_libraries():
    """diffusers' own progress bars and warnings ("Loading pipeline components...") would break the
    one-line error and clutter --json runs; mpsearch reports its own progress. Restored afterwards."""
    from diffusers.utils import logging as dlogging

    loggers = [dlogging]
    try:  # text pipelines: transformers prints "Loading weights" bars for the text encoders
        from transformers.utils import logging as tlogging

        loggers.append(tlogging)
    except ImportError:
        pass
    saved = [(lg, lg.is_progress_bar_enabled(), lg.get_verbosity()) for lg in loggers]
    for lg in loggers:
        lg.disable_progress_bar()
        lg.set_verbosity_error()
    try:
        yield
    finally:
        for lg, bars, level in saved:
            lg.set_verbosity(level)
            if bars:
                lg.enable_progress_bar()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if not getattr(args, "fn", None):
            build_parser().print_help()
            return 2
        with _quiet_libraries():
            return args.fn(args)
    except MpsearchError as e:
        if debug:
            raise
        print(f"mpsearch: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mpsearch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI never shows a traceback unless asked
        if debug:
            raise
        print(f"mpsearch: error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1

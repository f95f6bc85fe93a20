"""`mpsearch profile` (local tier, end-to-end tier, latency table) and `mpsearch profile merge`."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mpsearch.apps import pipeline
from mpsearch.apps.cli.common import emit
from mpsearch.apps.profile import default_profile_path, profile
from mpsearch.errors import UsageError
from mpsearch.profiling.auto import parse_max_memory
from mpsearch.profiling.calibrate import parse_variants
from mpsearch.profiling.distributed import detect_launch, distributed_session, launch_device
from mpsearch.profiling.estimate import estimate_profile
from mpsearch.profiling.latency import measure_latency
from mpsearch.profiling.profiler import ProfileConfig
from mpsearch.profiling.prompting import calibration_config
from mpsearch.profiling.store import merge_profiles, stored_config, write_latency
from mpsearch.prompts import choose_prompts

_PROFILE_DEFAULTS = {"formats": ["int8", "nvfp4", "int4"], "steps": 20, "labels": list(range(10)), "seeds": [0, 1]}


_PROFILE_CONFIG_FLAGS = ("formats", "steps", "labels", "seeds", "guidance", "prompts", "size", "sample", "replay_steps",
                         "replay_batch", "replay_rows")


def _profile_config(args, out):
    """The profile's configuration: from the options; with ``--latency`` and no configuration option on an
    existing profile file, the file's own (so a latency table is added without repeating its options)."""

    given = [f for f in _PROFILE_CONFIG_FLAGS if getattr(args, f) is not None]
    if args.latency and not given:
        stored = stored_config(out)
        if stored is not None:
            return ProfileConfig(**stored)
    value = lambda name: getattr(args, name) if getattr(args, name) is not None else _PROFILE_DEFAULTS[name]  # noqa: E731
    return ProfileConfig(labels=tuple(value("labels")), seeds=tuple(value("seeds")), steps=value("steps"),
                         guidance_scale=args.guidance, formats=tuple(value("formats")),
                         **_prompts(args.prompts), size=args.size,
                         sample=args.sample, replay_steps=args.replay_steps, replay_batch=args.replay_batch,
                         replay_rows=args.replay_rows,
                         replay_checkpoint=getattr(args, "replay_checkpoint", None) or False)


def _prompts(spec) -> dict:
    """ProfileConfig's prompt fields for --prompts N|FILE (N: that many of the built-in calibration set)."""
    chosen = choose_prompts(spec, "calibration")
    if chosen is None:
        return {"prompts": ()}
    return {"prompts": chosen.prompts, "prompt_set": chosen.source if chosen.builtin else None}


def _latency_lines(summary: dict) -> list[str]:
    totals = summary["totals"]
    shares = ", ".join(f"{name} {t['vs_fp']:.2f}x" for name, t in totals.items()
                       if name != "fp" and t["vs_fp"] is not None)
    return [f"latency on {summary['device']} (torch {summary['torch']}, {summary['threads']} threads, measured "
            f"{summary['measured_at']}): fp {summary['fp_seconds'] * 1e3:.3f} ms per denoiser call over "
            f"{summary['layers']} layers; vs fp on the layers that take them: {shares}"]


def cmd_profile(args) -> int:

    out = Path(args.out) if args.out else default_profile_path(args.model)
    launch = detect_launch()  # torchrun / accelerate launch: one shard per rank, rank 0 merges and reports
    if launch is not None and args.shard != (0, 1):
        raise UsageError(f"--shard {args.shard[0]}/{args.shard[1]} and a distributed launch (rank {launch.rank} of "
                         f"{launch.world_size}) both split the work; under torchrun or accelerate launch each rank "
                         "takes its shard from torch.distributed: leave out --shard")
    if launch is not None and args.estimate:
        raise UsageError("--estimate predicts a one-process profile from a one-step run: run it without torchrun or "
                         "accelerate launch (python -m mpsearch profile --estimate ...)")
    if args.end_to_end and args.shard != (0, 1):
        raise UsageError("--end-to-end needs the whole local profile: merge the shards first, then run "
                         "`mpsearch profile --end-to-end --out MERGED` with the same options")
    if args.latency and args.shard != (0, 1):
        raise UsageError("--latency measures the whole model on this machine: merge the shards first, then run "
                         "`mpsearch profile --latency --out MERGED`")
    if args.exact and (args.max_time is not None or args.max_memory is not None):
        raise UsageError("--max-time and --max-memory steer the automatic mode; leave them out with --exact")
    if args.max_memory is not None:
        parse_max_memory(args.max_memory)  # a bad value fails before the model is loaded
    if args.variants is not None:
        parse_variants(args.variants)
    config = _profile_config(args, out)
    if args.estimate and (args.end_to_end or args.latency or args.shard != (0, 1)):
        raise UsageError("--estimate predicts the local profile alone: leave out --end-to-end, --latency and --shard")
    device = launch_device(launch, args.device)
    with distributed_session(device, launch=launch) as session:
        return _profile(args, out, config, device, session)


def _profile(args, out, config, device, session) -> int:
    main = session is None or session.is_main
    pipe = pipeline.load_pipeline(args.model, device=None if device.type == "cpu" else device)
    # a text-to-image pipeline given neither --prompts nor --labels: the built-in calibration set
    config, said = calibration_config(pipe, config, {}, labels_given=args.labels is not None)
    if main and not args.json and (said or config.prompt_set):
        print(said or f"prompts: {config.prompt_set}", file=sys.stderr)
    if args.estimate:
        e = estimate_profile(pipe, config)
        line = (f"estimated profile of {args.model}: {e['seconds']:.1f} s, peak memory {e['peak_bytes'] / 1e9:.2f} GB "
                f"on {e['device']} ({e['units']} units x {e['steps']} steps, {e['replayed_steps']} replayed; from a "
                f"one-step run: setup {e['setup_seconds']:.1f} s, {e['step_seconds']:.2f} s per step, "
                f"{e['replay_seconds']:.2f} s per replayed step)")
        return emit(args, {"model": args.model, "estimate": e, **{k: e[k] for k in ("seconds", "peak_bytes")}}, [line])
    t0 = time.perf_counter()
    prof = profile(pipe, config, out=out, shard=args.shard, progress=not args.json and main,
                   end_to_end=args.end_to_end, shortlist=args.shortlist, windows=args.windows,
                   mode="exact" if args.exact else "auto", max_memory=args.max_memory, variants=args.variants,
                   **({"max_time": args.max_time} if args.max_time is not None else {}),
                   say=lambda line: print(line, file=sys.stderr, flush=True) if main else None)
    if args.latency:

        def latency():
            table = measure_latency(pipe, prof.info, formats=prof.formats, steps=config.steps,
                                    conditions=list(config.conditions), seed=config.seeds[0],
                                    guidance_scale=config.guidance_scale, size=config.size,
                                    min_time=args.latency_min_time, progress=not args.json)
            write_latency(out, table)

        if session is None:
            latency()
        else:  # one table, for rank 0's machine and device, in the merged file
            session.on_main(latency, what="waiting for rank 0 to measure the latency table")
    if not main:
        return 0  # rank 0 reports for every rank
    seconds = time.perf_counter() - t0
    data = {"profile": str(out), "model": args.model, "class": prof.info.denoiser_class,
            "layers": len(prof.info.layers),
            "formats": list(prof.formats), "steps": prof.steps, "units_done": len(prof.units),
            "units_total": len(config.seeds), "seconds": seconds, "digest": prof.digest,
            "processes": 1 if session is None else session.world_size}
    if prof.config.get("mode") == "auto":  # the automatic mode chose approximations: which and why
        data["auto"] = {k: prof.config[k] for k in ("sample", "replay_steps", "replay_batch", "replay_rows",
                                                     "replay_checkpoint", "reason") if k in prof.config}
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
    return emit(args, data, lines)


def cmd_profile_merge(args) -> int:

    prof = merge_profiles(args.shards, args.out)
    total = len(prof.config.get("seeds", ()))
    table = prof.latency()
    data = {"profile": str(args.out), "inputs": list(args.shards), "units_done": len(prof.units),
            "units_total": total, "digest": prof.digest, "latency": table.summary() if table is not None else None}
    lines = [f"profile {args.out}: merged {len(args.shards)} files, {len(prof.units)}/{total} units, "
             f"digest {prof.digest}"]
    if table is not None:
        lines += [f"latency table carried over: measured on {table.device} at {table.meta.get('measured_at')} (the "
                  "latest of the inputs')"]
    return emit(args, data, lines)

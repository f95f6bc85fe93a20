"""Profiling at real size: one plain generation vs `mpsearch.profile` of the same conditions, side by side.

Builds the published denoisers (sd15, pixart-sigma, dit-xl; ``mpsearch.apps.testing.real_size_pipeline``) at their
real size with random weights, inside pipelines with small text encoders and a small VAE, and measures in one
process, alternating: one plain generation and one profile (formats int8/nvfp4/int4) of the same prompt,
seed, size, steps and guidance. Reports the time ratio and the peak-memory ratio (peak RSS on the CPU, reset
between phases through /proc/self/clear_refs; torch.cuda.max_memory_allocated on a GPU), and, when asked, the
``--estimate`` prediction beside the measured profile. Results accumulate in docs/bench_scale_results.json under
``--label`` (e.g. "before" for the code before a change) and the `scale` section of docs/benchmarks.md shows
them all.

    python scripts/bench_scale.py --models sd15 --size 64 --steps 2 --label after [--sample 256]

With no profile option the profile runs in its default, automatic mode (its one-step probe counted in the
profile's time; the settings it chose are recorded as ``auto``); options given run exactly those settings
(``mode="exact"``), and ``--exact`` alone the exact profile.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from benchdoc import machine, write_section

from mpsearch.apps.profile import profile
from mpsearch.apps.testing import real_size_pipeline
from mpsearch.models import get_denoiser
from mpsearch.profiling.profiler import ProfileConfig
from mpsearch.prompts import builtin_prompts
from mpsearch.runtime.generation import generate

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench_scale_results.json"
FORMATS = ("int8", "nvfp4", "int4")
PROMPT = "a photograph of an astronaut riding a horse"


def _reset_peak(device):
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS


def _peak(device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 1e9
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024 / 1e9
    raise RuntimeError("no VmHWM in /proc/self/status")


def _conditions(name, prompts=None):
    """(conditions, guidance, whether the size applies): one prompt, or ``prompts`` of the built-in calibration
    set (the profile's default set for a text-to-image pipeline)."""
    if name == "dit-xl":
        labels = (207, 360, 387, 974, 88, 979, 417, 279)
        return labels[: prompts or 1], None, None  # class labels; DiT has a fixed image size
    if prompts:
        return tuple(builtin_prompts(int(prompts)).prompts), 7.5, "size"
    return (PROMPT,), 7.5, "size"


def bench_model(name, args, device, options) -> dict:
    pipe = real_size_pipeline(name).to(device)
    den = get_denoiser(pipe)
    params = sum(p.numel() for p in den.parameters())
    conds, guidance, sized = _conditions(name, args.prompts)
    size = args.size if sized else None
    key = "prompts" if isinstance(conds[0], str) else "labels"
    # F821: pipe is deleted only at the end, after every gen() call
    gen = lambda: generate(pipe, conds, 0, args.steps, guidance, size)  # noqa: E731, F821
    gen()  # warm-up (allocator, kernels)
    rows = []
    for r in range(args.repeats):
        _reset_peak(device)
        base = _peak(device)
        t0 = time.perf_counter()
        gen()
        t_gen, m_gen = time.perf_counter() - t0, _peak(device)
        with tempfile.TemporaryDirectory() as d:
            _reset_peak(device)
            t0 = time.perf_counter()
            prof = profile(pipe, out=Path(d) / "p.sqlite", progress=False, formats=FORMATS, steps=args.steps,
                           guidance_scale=guidance, seeds=(0,), size=size, **{key: conds}, **options,
                           mode="exact" if options or args.exact else "auto", say=print,
                           **({"variants": args.variants} if args.variants else {}))
            t_prof, m_prof = time.perf_counter() - t0, _peak(device)
            chosen = {k: prof.config[k] for k in ("sample", "replay_steps", "replay_batch", "replay_rows",
                                                  "replay_checkpoint") if k in prof.config}
        rows.append({"gen_s": t_gen, "profile_s": t_prof, "gen_peak_gb": m_gen, "profile_peak_gb": m_prof,
                     "idle_gb": base})
        if not options and not args.exact:
            rows[-1]["auto"] = chosen
        print(f"{name} repeat {r}: generation {t_gen:.1f} s, {m_gen:.2f} GB; profile {t_prof:.1f} s, "
              f"{m_prof:.2f} GB -> {t_prof / t_gen:.1f}x time, {m_prof / m_gen:.2f}x memory", flush=True)
    time_ratio = sorted(r["profile_s"] / r["gen_s"] for r in rows)[len(rows) // 2]
    mem_ratio = max(r["profile_peak_gb"] / r["gen_peak_gb"] for r in rows)
    shown = options if options or args.exact else {"auto": rows[-1]["auto"]}
    shown = {**shown, **({"prompts": len(conds)} if args.prompts else {}),
             **({"variants": args.variants} if args.variants else {})}
    out = {"model": name, "params_m": params / 1e6, "device": device, "size": size, "steps": args.steps,
           "guidance": guidance, "options": shown, "repeats": rows, "time_ratio": time_ratio,
           "memory_ratio": mem_ratio}
    if args.estimate:
        from mpsearch.profiling.estimate import estimate_profile

        est = estimate_profile(pipe, progress=False, formats=FORMATS, steps=args.steps, guidance_scale=guidance,
                               seeds=(0,), size=size, **{key: conds}, **options)
        out["estimate"] = {"seconds": est["seconds"], "peak_gb": est["peak_bytes"] / 1e9,
                           "measured_s": rows[-1]["profile_s"], "measured_peak_gb": rows[-1]["profile_peak_gb"],
                           "setup_s": est["setup_seconds"], "step_s": est["step_seconds"],
                           "replay_s": est["replay_seconds"]}
        print(f"{name} estimate's parts: setup {est['setup_seconds']:.1f} s, one probed step "
              f"{est['step_seconds']:.1f} s, one replayed step {est['replay_seconds']:.1f} s", flush=True)
        print(f"{name} estimate: {est['seconds']:.1f} s, {est['peak_bytes'] / 1e9:.2f} GB (measured "
              f"{rows[-1]['profile_s']:.1f} s, {rows[-1]['profile_peak_gb']:.2f} GB)", flush=True)
    del pipe, den
    gc.collect()
    return out


def _table(results: dict) -> str:
    lines = ["| label | model | params | device | size / steps | options | generation | profile | time ratio | "
             "peak: generation | peak: profile | memory ratio | estimate (time, peak) |",
             "| --- | --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for label, entries in results.items():
        for e in entries:
            r = e["repeats"]
            g = sorted(x["gen_s"] for x in r)[len(r) // 2]
            p = sorted(x["profile_s"] for x in r)[len(r) // 2]
            worst = max(r, key=lambda x: x["profile_peak_gb"] / x["gen_peak_gb"])  # the repeat of the memory ratio
            mg, mp = worst["gen_peak_gb"], worst["profile_peak_gb"]
            opts = ", ".join(f"{k}={v}" for k, v in e["options"].items() if k != "auto") or "exact"
            if "auto" in e["options"]:
                opts = "auto: " + (", ".join(f"{k}={v}" for k, v in e["options"]["auto"].items()) or "exact")
            est = e.get("estimate")
            est_s = (f"{est['seconds']:.0f} s, {est['peak_gb']:.1f} GB (measured {est['measured_s']:.0f} s, "
                     f"{est['measured_peak_gb']:.1f} GB)") if est else ""
            size = f"{e['size']} px" if e["size"] else "fixed"
            lines.append(f"| {label} | {e['model']} | {e['params_m']:.1f}M | {e['device']} | {size} / {e['steps']} | "
                         f"{opts} | {g:.1f} s | {p:.1f} s | **{e['time_ratio']:.1f}x** | {mg:.2f} GB | {mp:.2f} GB | "
                         f"**{e['memory_ratio']:.2f}x** | {est_s} |")
    return "\n".join(lines)


def _commands(results: dict) -> str:
    """Which command and machine measured which rows."""
    seen: dict = {}
    for label, entries in results.items():
        for e in entries:
            key = (e.get("command", "(not recorded)"), e.get("machine", "?"))
            seen.setdefault(key, []).append(f"{label}: {e['model']} {e['steps']} steps")
    return "Measured by:\n\n" + "\n".join(f"- `{c}` on {m}: {', '.join(rows)}" for (c, m), rows in seen.items())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="sd15,pixart-sigma")
    ap.add_argument("--size", type=int, default=64, help="image size in px (the VAE downsamples 2x)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--label", default="after")
    ap.add_argument("--sample", type=int, default=None, help="ProfileConfig.sample (rows and channels per layer)")
    ap.add_argument("--replay-steps", type=int, default=None, help="ProfileConfig.replay_steps")
    ap.add_argument("--replay-batch", type=int, default=None, help="ProfileConfig.replay_batch")
    ap.add_argument("--replay-rows", type=int, default=None, help="ProfileConfig.replay_rows")
    ap.add_argument("--replay-checkpoint", nargs="?", type=float, const=1.0, default=None, metavar="SHARE",
                    help="ProfileConfig.replay_checkpoint (a share of the blocks; default 1: all)")
    ap.add_argument("--exact", action="store_true", help="the exact profile (default with no option: the auto mode)")
    ap.add_argument("--prompts", type=int, default=None, metavar="N",
                    help="N prompts of the built-in calibration set (N class labels for DiT-XL); default one")
    ap.add_argument("--variants", default=None, help="the profile's quantizer variants (default: the auto mode's)")
    ap.add_argument("--estimate", action="store_true", help="also run --estimate and show it beside the run")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-doc", action="store_true")
    ap.add_argument("--render", action="store_true", help="measure nothing: rewrite the section from the results file")
    args = ap.parse_args(argv)
    options = {k: v for k, v in (("sample", args.sample), ("replay_steps", args.replay_steps),
                                 ("replay_batch", args.replay_batch), ("replay_rows", args.replay_rows))
               if v is not None}
    if args.replay_checkpoint:
        options["replay_checkpoint"] = ProfileConfig(replay_checkpoint=args.replay_checkpoint).replay_checkpoint
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entries = [] if args.render else [bench_model(m, args, args.device, options) for m in args.models.split(",")]
    command = "python scripts/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for e in entries:
        e["machine"] = machine() if args.device == "cpu" else torch.cuda.get_device_name()
        e["command"] = command
    kept = [e for e in results.get(args.label, [])
            if not any((e["model"], e["size"], e["steps"], e["device"])
                       == (n["model"], n["size"], n["steps"], n["device"])
                       and e["options"] == n["options"] for n in entries)]
    results[args.label] = kept + entries
    RESULTS.write_text(json.dumps(results, indent=1))
    if not args.no_doc:
        body = ("One plain generation vs `mpsearch.profile` (formats int8, nvfp4, int4; one prompt unless the options "
                "say `prompts: N`, N of the built-in calibration set (N class labels for DiT-XL), seed 0, guidance "
                "7.5 except DiT-XL) of the same conditions, in one process, alternating. Peak memory is peak RSS "
                "reset between phases on the CPU (so it includes the model's own weights and the pipeline), "
                "torch.cuda.max_memory_allocated on a GPU. Times and time ratio: medians over repeats; "
                "memory ratio: the "
                "worst repeat (its two peaks shown). "
                "Targets: <= 3x time, <= 1.25x memory. `before` = the earlier profiler (a dequantized "
                "copy of every layer in every format).\n\n" + _table(results) + "\n\n" + _commands(results))
        write_section("scale", "Profiling at real size: profile vs one generation", body, command)


if __name__ == "__main__":
    main()

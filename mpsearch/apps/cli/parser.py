"""The argparse definition of every `mpsearch` command and flag."""

from __future__ import annotations

import argparse

from mpsearch.allocation.defaults import DEFAULT_ROUNDS, DEFAULT_SOLVER, SOLVER_NAMES
from mpsearch.apps.cli.arguments import Parser, generations, int_list, prompts_arg, seed_list, shard, share, str_list
from mpsearch.apps.cli.commands import (
    cmd_demo,
    cmd_eval,
    cmd_export,
    cmd_generate,
    cmd_inspect,
    cmd_profile,
    cmd_profile_merge,
    cmd_report,
    cmd_solve,
)
from mpsearch.version import __version__


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="mpsearch", description="Mixed-precision bit allocation and cache scheduling for diffusers models.")
    p.add_argument("--version", action="version", version=f"mpsearch {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")

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
    sp.add_argument("--model", default=None, help=model_help + " (default: the plan's model, else default)")
    sp.add_argument("--plan", help="plan YAML to apply")
    sp.add_argument("--ignore-weights", action="store_true",
                    help="apply the plan even if the model's weights differ from those it was made from")
    sp.add_argument("--labels", type=int_list, default=list(range(10)), help="comma-separated class labels")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the pipeline's)")
    sp.add_argument("--prompts", metavar="N|FILE", type=prompts_arg,
                    help="text prompts (text-to-image pipelines): N built-in held-out prompts, or a file, one "
                    "per line (default: 4 built-in held-out prompts)")
    sp.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the pipeline's)")
    sp.add_argument("--out", default="out", help="folder for the PNGs")

    sp = add("export", cmd_export, "write a pipeline folder whose denoiser holds a plan's packed weights")
    sp.add_argument("--model", default="default", help=model_help)
    sp.add_argument("--plan", required=True, help="plan YAML to apply")
    sp.add_argument("--out", required=True, help="the folder to write (an older checkpoint there is replaced)")
    sp.add_argument("--ignore-weights", action="store_true",
                    help="export even if the model's weights differ from those the plan was made from")

    sp = add("profile", cmd_profile, "measure per-layer, per-format, per-step sensitivity (local tier)")
    sp.add_argument("--model", default="default", help=model_help)
    sp.add_argument("--out", help="profile file (default profiles/<model>.sqlite); an existing one is resumed")
    sp.add_argument("--formats", type=str_list, default=None, help="default int8,nvfp4,int4")
    sp.add_argument("--steps", type=int, default=None, help="default 20")
    sp.add_argument("--labels", type=int_list, default=None, help="default 0,...,9")
    sp.add_argument("--seeds", type=seed_list, default=None, help="default 0,1")
    sp.add_argument("--guidance", type=float, default=None)
    sp.add_argument("--prompts", metavar="N|FILE", type=prompts_arg,
                    help="text prompts (replace --labels): N of the built-in calibration set, or a file, one "
                    "per line (default for a text-to-image pipeline: 4 built-in)")
    sp.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the pipeline's)")
    sp.add_argument("--shard", type=shard, default=(0, 1), help="measure only shard i of n (i/n); under torchrun "
                    "or accelerate launch each rank takes its shard by itself and rank 0 merges")
    sp.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="where to profile (default: cpu; under torchrun or accelerate launch cuda:LOCAL_RANK when "
                    "there are GPUs, else cpu)")
    sp.add_argument("--sample", type=int, default=None, metavar="N",
                    help="estimate each layer's errors from a seeded subset of at most N output channels x N "
                    "activation rows (real-size models; default: every element)")
    sp.add_argument("--replay-steps", type=int, default=None, metavar="K",
                    help="replay only K evenly spread steps for the output sensitivity, interpolating the others")
    sp.add_argument("--replay-batch", type=int, default=None, metavar="B",
                    help="replay each denoiser call in micro-batches of at most B rows (1: the halves of a "
                    "guidance batch one at a time) for a fraction of the replay's memory")
    sp.add_argument("--replay-rows", type=int, default=None, metavar="R",
                    help="replay only R rows of each denoiser call's batch, drawn at random and scaled up (1: one "
                    "half of a guidance batch): an unbiased estimate for R/batch of the replay's time")
    sp.add_argument("--replay-checkpoint", nargs="?", type=share, const=1.0, default=None, metavar="SHARE",
                    help="checkpoint the denoiser's blocks in the replay: the same numbers, one block's "
                    "activations instead of all, for about one more forward pass per replayed call; SHARE in "
                    "(0, 1]: checkpoint that share of the blocks (default 1: all)")
    sp.add_argument("--exact", action="store_true",
                    help="measure every element at every step (no automatic approximations; flags still apply)")
    sp.add_argument("--variants", default=None, metavar="none|default|all|LIST",
                    help="calibrated quantizer variants measured besides round-to-nearest (clip, smooth, gptq, awq, "
                    "smooth-gptq); default: gptq and smooth-gptq where the model is profiled exactly, none for a large "
                    "model; all: every one")
    sp.add_argument("--max-time", type=generations, default=None, metavar="X",
                    help="automatic mode: keep the profile within X generations' time (default 3)")
    sp.add_argument("--max-memory", default=None, metavar="SIZE|Xx",
                    help="automatic mode: memory cap, e.g. 20GB or 1.5x a generation's peak (default 1.25x on the "
                    "CPU, the device's free memory on a GPU)")
    sp.add_argument("--estimate", action="store_true",
                    help="measure a one-step, one-unit profile and print the predicted time and peak memory of "
                    "the whole profile, without writing it")
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
    merge = sp.add_subparsers(dest="profile_command", parser_class=Parser, metavar="merge")
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
    sp.add_argument("--metric", default="auto",
                    help="auto (gn where the profile has it, else rel_mse), gn, rel_mse, sqnr or cosine")
    sp.add_argument("--solver", default=DEFAULT_SOLVER, choices=SOLVER_NAMES,
                    help=f"{DEFAULT_SOLVER} (exact, CBC; the default), highs (exact, HiGHS), greedy, ...")
    sp.add_argument("--pins", action="append", default=None, metavar="REGEX=FORMAT",
                    help="keep matching layers in a format (repeat for more)")
    sp.add_argument("--tie", action="store_true", help="layers that read one input (q/k/v) share a format")
    sp.add_argument("--objective-weights", metavar="content=1,quality=1",
                    help="decoupled end-to-end objective (needs `profile --end-to-end`): weights per kind or metric")
    sp.add_argument("--max-damage", type=float, metavar="F",
                    help="minimax: rule out any layer/format whose end-to-end damage exceeds F x the largest")
    sp.add_argument("--fp-act-windows", type=int, default=0, metavar="K",
                    help="keep activations fp in the K most damaging measured step windows (W4A4/W8A8 layers)")
    cache = sp.add_mutually_exclusive_group()
    cache.add_argument("--full-computations", type=int, metavar="K",
                       help="also schedule a feature cache: K full computations")
    cache.add_argument("--speedup", type=float, metavar="X",
                       help="also schedule a feature cache for an ideal speedup X")
    sp.add_argument("--cache-method", default="dp", choices=("dp", "uniform", "threshold"), help="cache scheduler")
    sp.add_argument("--cache-unit", help="cacheable unit (default: the largest; see `mpsearch inspect`)")
    sp.add_argument("--model", default=None, help="with a cache, --compute or --search optuna: the pipeline (default: "
                    "the profile's model)")
    sp.add_argument("--allow-partial", action="store_true",
                    help="solve from a profile that lacks some of its units (one shard of --shard i/n)")
    sp.add_argument("--warmup", type=int, default=2, help="with a cache: first steps always computed")
    sp.add_argument("--max-reuse", type=int, default=None, help="with a cache: at most this many reuses in a row")
    sp.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                    help=f"with a cache: solve/schedule rounds (default {DEFAULT_ROUNDS})")
    sp.add_argument("--role-pins", default=None, metavar="default|none|ROLE=FORMAT,...",
                    help="pin fragile layers by role: default (embedders, first/last projections: fp; AdaLN: int8), "
                    "none, or your own, e.g. time_embed=fp,modulation=int8")
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
    sp.add_argument("--search-seeds", type=int_list, default=[500], help="with --search optuna: seeds per trial")

    sp = add("eval", cmd_eval, "score a plan against full precision on held-out seeds")
    sp.add_argument("--model", default=None, help=model_help + " (default: the plan's model, else default)")
    sp.add_argument("--plan", help="plan YAML (omit for full precision)")
    sp.add_argument("--labels", type=int_list, default=list(range(10)))
    sp.add_argument("--seeds", type=seed_list, default=[1000, 1001])
    sp.add_argument("--prompts", metavar="N|FILE", type=prompts_arg,
                    help="text prompts (replace --labels): N of the built-in held-out set, or a file, one "
                    "per line (default for a text-to-image pipeline: 4 built-in)")
    sp.add_argument("--steps", type=int, default=20)
    sp.add_argument("--size", type=int, default=None, help="image height and width in pixels (default: the pipeline's)")

    sp = add("demo", cmd_demo, "the whole flow on the embedded default: profile, solve, compare with uniform formats")
    sp.add_argument("--model", default="default", help="default or default-unet")

    sp = add("report", cmd_report,
             "write an HTML page with figures: sensitivity, Pareto frontier, plans, cache, images")
    sp.add_argument("--profile", help="profile file (default profiles/<model>.sqlite if it exists)")
    sp.add_argument("--plan", action="extend", nargs="+", metavar="PLAN", help="plan YAML files to show")
    sp.add_argument("--model", default=None, help=model_help + "; images are generated with it (default: the "
                    "profile's or plan's model)")
    sp.add_argument("--out", default="report", help="folder for index.html and its PNGs (an older report there "
                    "is replaced)")
    sp.add_argument("--labels", type=int_list, default=list(range(10)), help="class labels of the image grid")
    sp.add_argument("--prompts", metavar="N|FILE", type=prompts_arg,
                    help="text prompts (replace --labels): N of the built-in held-out set, or a file, one "
                    "per line (default for a text-to-image pipeline: 4 built-in)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--steps", type=int, default=None, help="denoising steps (default: the plans' cache schedule, "
                    "else 20)")
    sp.add_argument("--metric", default="auto", help="auto, gn, rel_mse, sqnr or cosine: the frontier's objective")
    sp.add_argument("--points", type=int, default=12, help="budgets on the Pareto frontier (0: no frontier)")
    sp.add_argument("--no-images", action="store_true", help="skip the image grid (no generation)")
    return p

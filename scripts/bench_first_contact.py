"""A user's first contact at real size: each CLI command as its own process, with its wall time and peak RSS.

Saves a pipeline whose denoiser is the real-size SD1.5 UNet with random weights
(``mpsearch.apps.testing.real_size_pipeline("sd15")``, small text encoder and VAE) to a temporary folder, then runs
``mpsearch --help``, ``--version``, ``inspect``, ``profile``, ``solve --budget 1GB``, ``solve`` again on the
existing profile, ``export``, and ``generate`` from the export and from the plan applied to the folder with the
same seed, each as ``python -m mpsearch ...`` in a separate process (peak RSS from that process's own rusage,
``os.wait4``). Checks that the exported model's images equal apply_plan's pixel for pixel and the targets:
``--help``/``--version`` < 0.5 s, ``solve`` on a profile < 2 s wall, ``inspect`` < 1 GB peak RSS. Prints a
markdown table and writes JSON (``--out``).

    python scripts/bench_first_contact.py --out first_contact.json                  # real size (minutes, ~8 GB)
    python scripts/bench_first_contact.py --arch tiny --budget 80% --out /tmp/fc.json  # tiny stand-in (check)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGETS = {"--help": ("wall_s", 0.5), "--version": ("wall_s", 0.5), "solve (existing profile)": ("wall_s", 2.0),
           "inspect": ("peak_rss_mb", 1024.0)}
SAVE = {
    "sd15": "from mpsearch.apps.testing import real_size_pipeline as b; b('sd15').save_pretrained({path!r}, "
            "safe_serialization=True)",
    "tiny": "from mpsearch.apps.testing import save_tiny_pipeline as s; s('sd15', {path!r})",
}


def measure(name: str, argv: list[str], env: dict) -> dict:
    """Run ``argv`` as a child process; its wall time, peak RSS (its own rusage) and output."""
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=fout, stderr=ferr, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (ru_maxrss: its peak RSS, KiB)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    row = {"command": name, "argv": argv[3:] if argv[1:3] == ["-m", "mpsearch"] else argv[1:],
           "wall_s": round(wall, 3), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit": code}
    if code != 0:
        raise SystemExit(f"{name} failed (exit {code}): {err.decode(errors='replace').strip().splitlines()[-1:]}")
    row["stdout"] = out.decode(errors="replace").strip()
    return row


def pixels_equal(a: list[str], b: list[str]) -> bool:
    import numpy as np
    from PIL import Image

    return len(a) == len(b) > 0 and all(np.array_equal(np.asarray(Image.open(x)), np.asarray(Image.open(y)))
                                        for x, y in zip(a, b, strict=True))


def run(args) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    py, cli = sys.executable, [sys.executable, "-m", "mpsearch"]
    sized = (["--size", str(args.size)] if args.size else []) + (["--steps", str(args.steps)] if args.steps else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="mpsearch-first-contact-", dir=args.tmp) as tmp:
        t = Path(tmp)
        model, prof, plan, exp = t / "model", t / "prof.sqlite", t / "plan.yaml", t / "exp"
        rows.append(measure("save pipeline", [py, "-c", SAVE[args.arch].format(path=str(model))], env))
        rows.append(measure("--help", [*cli, "--help"], env))
        rows.append(measure("--version", [*cli, "--version"], env))
        rows.append(measure("inspect", [*cli, "inspect", "--model", str(model), "--json"], env))
        device = ["--device", args.device] if args.device else []
        rows.append(measure("profile", [*cli, "profile", "--model", str(model), "--out", str(prof), *sized,
                                        *device, "--json"], env))
        solve = [*cli, "solve", "--profile", str(prof), "--budget", args.budget, "--out", str(plan), "--json"]
        rows.append(measure("solve", solve, env))
        rows.append(measure("solve (existing profile)", solve, env))  # again: the plan is replaced, same result
        rows.append(measure("export", [*cli, "export", "--model", str(model), "--plan", str(plan), "--out", str(exp),
                                       "--json"], env))
        gen = ["--seed", "0", "--prompts", str(args.prompts), *sized, "--json"]
        rows.append(measure("generate (export)", [*cli, "generate", "--model", str(exp), *gen, "--out",
                                                  str(t / "img-export")], env))
        rows.append(measure("generate (plan applied)", [*cli, "generate", "--model", str(model), "--plan", str(plan),
                                                        *gen, "--out", str(t / "img-applied")], env))
        a, b = (json.loads(r["stdout"])["images"] for r in rows[-2:])
        equal = pixels_equal(a, b)
        solved = json.loads(rows[5]["stdout"])
    for r in rows:
        target = TARGETS.get(r["command"])
        r["target"] = f"{target[0]} < {target[1]}" if target else None
        r["ok"] = (r[target[0]] < target[1]) if target else None
        r.pop("stdout")
    return {"arch": args.arch, "size": args.size, "steps": args.steps, "budget": args.budget,
            "plan_bytes": solved["bytes"], "plan_formats": solved["formats"], "exported_equals_applied": equal,
            "machine": {"python": platform.python_version(), "platform": platform.platform(),
                        "cpus": os.cpu_count()}, "rows": rows}


def table(result: dict) -> str:
    title = (f"first contact, {result['arch']} (size {result['size'] or 'default'}, steps "
             f"{result['steps'] or 'default'}, budget {result['budget']}: {result['plan_bytes']:,} B "
             f"{result['plan_formats']}); exported images equal apply_plan's: {result['exported_equals_applied']}")
    lines = [title, "", "| command | wall (s) | peak RSS (MB) | target | ok |", "|---|---:|---:|---|---|"]
    for r in result["rows"]:
        ok = "" if r["ok"] is None else ("yes" if r["ok"] else "**no**")
        lines.append(f"| {r['command']} | {r['wall_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['target'] or ''} | {ok} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(SAVE), default="sd15",
                    help="sd15: the real-size UNet (random weights); tiny: a small stand-in to check the script")
    ap.add_argument("--size", type=int, help="image size in pixels for profile and generate (default: the pipeline's)")
    ap.add_argument("--steps", type=int, help="denoising steps for profile and generate (default: the CLI's)")
    ap.add_argument("--budget", default="1GB", help="solve --budget (default 1GB)")
    ap.add_argument("--prompts", type=int, default=1, help="built-in held-out prompts to generate (default 1)")
    ap.add_argument("--device", choices=["cpu", "cuda"], help="profile --device (default: the CLI's)")
    ap.add_argument("--tmp", help="folder for the temporary pipeline, profile, plan and export (default: system's)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    result = run(args)
    print(table(result))
    if args.out:
        sys.path.insert(0, str(ROOT))
        from mpsearch.io import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(result, indent=1) + "\n")
    ok = result["exported_equals_applied"] and all(r["ok"] is not False for r in result["rows"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""End-to-end tier: metric-decoupled sensitivity of chosen layers, groups and step windows (MixDQ / ViDiT-Q).

A *unit* quantizes one target (a layer, or a group of layers: a block, a role, a plan) in one format,
optionally only within a window of denoising steps, generates with the profile's seeds and conditions, and
scores the images against the full-precision images under content metrics (SSIM; agreement with the
requested condition) and quality metrics (image PSNR and SQNR; Frechet distance in a feature space). Every
metric is stored separately in the profile file, one unit per transaction, so a killed run resumes:

  e2e_runs(run, config)                        one row per measuring setup (seeds, steps, scorer, features)
  e2e_units(run, unit, layers, format, start, stop, kind, seconds)
  e2e(run, unit, metric, value)                raw metric values; the "fp" unit holds full precision's own

Old profiles have none of these tables and load as before; ``merge_profiles`` copies the local tier only.

Cheap: :func:`shortlist` picks what to measure from the local tier (layers whose format flips across a
sweep of budgets, ranked by local sensitivity x bytes saved), and :func:`window_units` measures the mid-budget
local plan per step window (one generation per window, not per layer). :func:`e2e_costs` turns the
measurements into the decoupled objective: per metric a damage (>= 0), normalized by its largest value;
content and quality metrics averaged within their kind and combined with the user's weights. Layers not
measured get an estimate from the local tier, calibrated on the measured ones (a least-squares line between
log local cost and log damage, per metric; see :func:`calibrate`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import ProfileError, UsageError
from .formats import get_format
from .formulate import build_problem, layer_costs
from .generation import generate
from .metrics import frechet_distance, psnr, sqnr, ssim
from .models import get_denoiser
from .profile_store import Profile, _connect
from .qmodules import StepTracker, quantized_module

_TABLES = """
CREATE TABLE IF NOT EXISTS e2e_runs (run TEXT PRIMARY KEY, config TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS e2e_units (run TEXT, unit TEXT, layers TEXT, format TEXT, start INTEGER, stop INTEGER,
    kind TEXT, seconds REAL, PRIMARY KEY (run, unit));
CREATE TABLE IF NOT EXISTS e2e (run TEXT, unit TEXT, metric TEXT, value REAL, PRIMARY KEY (run, unit, metric));
"""

#: what each stored metric measures; the objective averages the metrics of a kind (class_agreement is stored
#: and reported but left out of the objective: with a few dozen images it moves in coarse steps)
METRIC_KIND = {"ssim": "content", "condition": "content", "class_agreement": "content",
               "psnr": "quality", "sqnr": "quality", "frechet": "quality"}
OBJECTIVE_METRICS = {"content": ("ssim", "condition"), "quality": ("psnr", "frechet")}


def damage(metric: str, value, fp_value):
    """A stored metric value turned into damage against full precision (0 = none, larger = worse):
    1 - SSIM; 10^(-dB/10) for PSNR and SQNR (the MSE they stand for); the drop in condition score or class
    agreement from full precision's own; the Frechet distance itself."""
    value = np.asarray(value, dtype=float)
    if metric == "ssim":
        return 1.0 - value
    if metric in ("psnr", "sqnr"):
        return 10.0 ** (-value / 10.0)
    if metric in ("condition", "class_agreement"):
        return float(fp_value) - value
    if metric == "frechet":
        return value
    raise UsageError(f"unknown end-to-end metric {metric!r}; expected one of {', '.join(METRIC_KIND)}")


# ------------------------------------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    """One end-to-end measurement: ``layers`` in ``format`` (layers that cannot take it stay fp), only at
    steps ``window = (start, stop)`` (None: every step). ``label`` names a group (default: the layer)."""

    layers: tuple[str, ...]
    format: str
    window: tuple[int, int] | None = None
    label: str = ""
    kind: str = "layer"  # "fp", "layer", "group" or "window"

    def __post_init__(self):
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.window is not None:
            start, stop = (int(x) for x in self.window)
            if not 0 <= start < stop:
                raise UsageError(f"window must be (start, stop) steps with 0 <= start < stop, got {self.window}")
            object.__setattr__(self, "window", (start, stop))
        if not self.label:
            object.__setattr__(self, "label", self.layers[0] if len(self.layers) == 1 else f"{len(self.layers)} layers")

    @property
    def key(self) -> str:
        w = "all" if self.window is None else f"{self.window[0]}-{self.window[1]}"
        return f"{self.kind}:{self.label}:{self.format}:{w}"


FP_UNIT = Unit((), "fp", None, "fp", "fp")


def layer_units(info, pairs) -> list[Unit]:
    """One unit per (layer, format) pair."""
    return [Unit((name,), fmt) for name, fmt in pairs]


def exhaustive_units(info, formats) -> list[Unit]:
    """Every layer x every eligible format of ``formats`` (the reference the cheap run is compared with)."""
    return [Unit((l.name,), f) for l in info.layers for f in formats if f != "fp" and f in l.eligible]


def group_units(info, fmt: str, by: str = "block") -> list[Unit]:
    """One unit per block (the name up to the block index) or per role, all its layers in ``fmt``."""
    groups: dict[str, list[str]] = {}
    for l in info.layers:
        if by == "role":
            key = l.role.value
        elif by == "block":
            parts = l.name.split(".")
            key = ".".join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
        else:
            raise UsageError(f"group by {by!r}: expected block or role")
        if fmt in l.eligible:
            groups.setdefault(key, []).append(l.name)
    return [Unit(tuple(v), fmt, None, k, "group") for k, v in groups.items()]


def step_windows(steps: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous windows covering ``steps`` steps (fewer when there are fewer steps)."""
    count = max(1, min(int(count), steps))
    edges = np.linspace(0, steps, count + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


# ------------------------------------------------------------------------------------------- scoring


def default_scorers(pipe, conditions):
    """(content_scorer, features) from the shipped digit classifier, or (None, None) where it cannot read the
    images (text prompts): then condition agreement and the Frechet distance need user-supplied functions."""
    if any(isinstance(c, str) for c in conditions):
        return None, None
    from .classifier import load_classifier, to_tensor

    clf = load_classifier()

    @torch.no_grad()
    def digit_condition(images, labels):
        """Softmax probability of the requested digit, per image."""
        p = torch.softmax(clf(to_tensor(images)), -1).numpy()
        return p[np.arange(len(p)), np.asarray(labels, dtype=int)]

    @torch.no_grad()
    def digit_features(images):
        return clf.features(to_tensor(images)).numpy()

    digit_condition.agreement = lambda images, labels: (clf.predict(images).numpy() == np.asarray(labels))
    return digit_condition, digit_features


def score_images(ref, out, conditions, content_scorer=None, features=None, ref_features=None) -> dict:
    """Raw metric values of ``out`` against the full-precision ``ref`` (both (N, H, W, C) in [0, 1])."""
    scores = {"ssim": ssim(ref, out), "psnr": psnr(ref, out),
              "sqnr": sqnr(torch.as_tensor(ref), torch.as_tensor(out))}
    if content_scorer is not None:
        vals = np.asarray(content_scorer(out, list(conditions)), dtype=float).reshape(-1)
        if vals.shape != (len(out),) or not np.isfinite(vals).all():
            raise UsageError(f"content_scorer must return one finite score per image ({len(out)}), got shape "
                             f"{vals.shape}; return e.g. a CLIP score per image")
        scores["condition"] = float(vals.mean())
        agreement = getattr(content_scorer, "agreement", None)
        if agreement is not None:
            scores["class_agreement"] = float(np.mean(agreement(out, list(conditions))))
    if features is not None and len(out) >= 2:
        f_out = np.asarray(features(out), dtype=float)
        f_ref = np.asarray(features(ref) if ref_features is None else ref_features, dtype=float)
        if f_out.ndim != 2 or len(f_out) != len(out):
            raise UsageError(f"features must return an (N, D) array with one row per image ({len(out)}), got "
                             f"shape {f_out.shape}; return e.g. Inception pool features")
        with warnings.catch_warnings():  # few images in many dimensions: singular covariances are expected
            warnings.simplefilter("ignore")
            scores["frechet"] = frechet_distance(f_ref, f_out)
    return scores


# ------------------------------------------------------------------------------------------- running


class _Swap:
    """Forward hook: inside the window, the layer's output is the quantized module's output."""

    def __init__(self, qmod, tracker, window):
        self.qmod, self.tracker, self.window = qmod, tracker, window

    @torch.no_grad()
    def __call__(self, module, inputs, output):
        if self.window is not None and not self.window[0] <= self.tracker.step < self.window[1]:
            return None
        return self.qmod(inputs[0]).to(output.dtype)


@contextlib.contextmanager
def quantized(pipe, layers, fmt: str, window=None):
    """Run ``layers`` of ``pipe``'s denoiser in ``fmt`` (with the executor's quantized modules) inside the
    step window only; layers that cannot take ``fmt`` stay fp. Hooks are removed on exit."""
    den = get_denoiser(pipe)
    modules = dict(den.named_modules())
    tracker = StepTracker()
    handles = [den.register_forward_pre_hook(tracker, with_kwargs=True)]
    try:
        for name in layers:
            if name not in modules:
                raise UsageError(f"layer {name!r} is not in the model; see `mpsearch inspect` for layer names")
            module = modules[name]
            f = get_format(fmt)
            if not f.eligible(tuple(module.weight.shape)):
                continue
            q = quantized_module(module, f.quantize(module.weight.detach()))
            q.cache_dequantized = True
            handles.append(module.register_forward_hook(_Swap(q, tracker, window)))
        if layers and len(handles) == 1:
            raise UsageError(f"none of {list(layers)[:3]} can take {fmt} (shape not eligible); measure an eligible "
                             "format (see `mpsearch inspect`)")
        yield
    finally:
        for h in handles:
            h.remove()


def _name(fn) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def measure(pipe, profile: Profile, units, *, content_scorer=None, features=None, seeds=None,
            progress: bool = False) -> dict:
    """Measure ``units`` end to end and store them in ``profile``'s file, one unit at a time (resumable).

    ``content_scorer(images, conditions) -> (N,) scores`` (higher = more faithful to the condition) and
    ``features(images) -> (N, D)`` replace the default digit classifier's (pass a CLIP scorer or an
    Inception extractor for real models). ``seeds`` (default: the profile's) are the generation seeds.
    Returns {"run", "measured": units measured now, "skipped": units already stored, "seconds",
    "generations": pipeline calls made now}.
    """
    if profile.path is None:
        raise UsageError("the profile has no file to store end-to-end results in; load it with Profile.load(path)")
    cfg = profile.config
    conditions = tuple(cfg.get("prompts") or cfg["labels"])
    seeds = tuple(int(s) for s in (seeds if seeds is not None else cfg["seeds"]))
    steps, guidance, size = int(cfg["steps"]), cfg.get("guidance_scale"), cfg.get("size")
    if content_scorer is None and features is None:
        content_scorer, features = default_scorers(pipe, conditions)
    for what, fn in (("content_scorer", content_scorer), ("features", features)):
        if fn is not None and not callable(fn):
            raise UsageError(f"{what} must be a function of the images, got {type(fn).__name__}")
    config = {"seeds": list(seeds), "steps": steps, "conditions": list(conditions), "guidance_scale": guidance,
              "size": size, "content_scorer": _name(content_scorer), "features": _name(features),
              "profile_weights": profile.weights}
    run = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    labels = [c for _ in seeds for c in conditions]
    gen = lambda: np.concatenate([generate(pipe, conditions, s, steps, guidance, size) for s in seeds])  # noqa: E731
    units = [FP_UNIT] + [u for u in units if u.key != FP_UNIT.key]
    t_all = time.perf_counter()
    with contextlib.closing(_connect(profile.path)) as conn:
        conn.executescript(_TABLES)
        with conn:
            conn.execute("INSERT OR IGNORE INTO e2e_runs VALUES (?, ?)", (run, json.dumps(config, sort_keys=True)))
        done = {u for (u,) in conn.execute("SELECT unit FROM e2e_units WHERE run = ?", (run,))}
        todo = [u for u in units if u.key not in done]
        out = {"run": run, "measured": 0, "skipped": len(units) - len(todo), "generations": 0}
        if todo:
            ref = gen()
            out["generations"] += len(seeds)
            ref_features = features(ref) if features is not None else None
            it = todo
            if progress:
                from tqdm.auto import tqdm

                it = tqdm(todo, desc="end-to-end", unit="unit")
            for u in it:
                t0 = time.perf_counter()
                if u.kind == "fp":
                    images = ref
                else:
                    with quantized(pipe, u.layers, u.format, u.window):
                        images = gen()
                    out["generations"] += len(seeds)
                scores = score_images(ref, images, labels, content_scorer, features, ref_features)
                start, stop = u.window if u.window is not None else (0, steps)
                with conn:
                    conn.execute("INSERT OR REPLACE INTO e2e_units VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                                 (run, u.key, json.dumps(list(u.layers)), u.format, start, stop, u.kind,
                                  time.perf_counter() - t0))
                    conn.executemany("INSERT OR REPLACE INTO e2e VALUES (?, ?, ?, ?)",
                                     [(run, u.key, m, float(v)) for m, v in scores.items()])
                out["measured"] += 1
    out["seconds"] = time.perf_counter() - t_all
    return out


# ------------------------------------------------------------------------------------------- reading


@dataclass
class E2EResults:
    """The stored end-to-end measurements of one run, as damages against full precision."""

    run: str
    config: dict
    units: list[dict]  # {key, layers, format, start, stop, kind, seconds, values: {metric: raw}}
    fp: dict  # full precision's own raw values

    @property
    def metrics(self) -> list[str]:
        return [m for m in METRIC_KIND if m in self.fp]

    def damages(self, unit: dict) -> dict:
        return {m: float(damage(m, unit["values"][m], self.fp[m])) for m in self.metrics if m in unit["values"]}

    def of_kind(self, kind: str) -> list[dict]:
        return [u for u in self.units if u["kind"] == kind]

    @property
    def generations(self) -> int:
        return len(self.units) * len(self.config["seeds"])


def load_results(path, run: str | None = None) -> E2EResults | None:
    """The end-to-end results stored in a profile file (``run``: one setup; default the latest), or None."""
    path = Path(path)
    with contextlib.closing(_connect(path, readonly=True)) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "e2e_runs" not in tables:
            return None
        runs = conn.execute("SELECT run, config FROM e2e_runs ORDER BY rowid").fetchall()
        if run is not None:
            runs = [r for r in runs if r[0] == run]
            if not runs:
                raise ProfileError(f"{path} has no end-to-end run {run!r}; leave the run out to use the latest")
        if not runs:
            return None
        run, config = runs[-1]
        try:
            config = json.loads(config)
            rows = conn.execute("SELECT unit, layers, format, start, stop, kind, seconds FROM e2e_units WHERE run = ? "
                                "ORDER BY rowid", (run,)).fetchall()
            values: dict[str, dict] = {}
            for unit, metric, value in conn.execute("SELECT unit, metric, value FROM e2e WHERE run = ?", (run,)):
                if not isinstance(value, (int, float)) or not np.isfinite(value):
                    raise ValueError(f"metric {metric} of {unit} is {value!r}")
                values.setdefault(unit, {})[metric] = float(value)
            units = [{"key": k, "layers": json.loads(l), "format": f, "start": int(a), "stop": int(b), "kind": kind,
                      "seconds": float(s), "values": values.get(k, {})} for k, l, f, a, b, kind, s in rows]
        except (ValueError, TypeError, json.JSONDecodeError) as e:
            raise ProfileError(f"{path} has corrupt end-to-end tables ({e}); delete them or profile again") from None
    fp = next((u["values"] for u in units if u["kind"] == "fp"), None)
    if fp is None:
        return None
    return E2EResults(run, config, [u for u in units if u["kind"] != "fp"], fp)


# ------------------------------------------------------------------------------------------- choosing


def _local_problem(profile: Profile, role_pins=None, step_weights=None):
    return build_problem(profile, None, metric="rel_mse", step_weights=step_weights, role_pins=role_pins)


def budget_sweep(profile: Profile, count: int = 5, role_pins=None) -> list[tuple[int, np.ndarray]]:
    """Local-tier plans (budget bytes, per-layer format index) at ``count`` budgets spread between the
    smallest feasible size and full precision."""
    from dataclasses import replace

    from .solver import get_solver, min_feasible_bytes

    problem = _local_problem(profile, role_pins)
    lo, hi = min_feasible_bytes(problem), profile.info.fp_bytes
    out = []
    for frac in np.linspace(0, 1, count + 2)[1:-1]:
        b = int(lo + frac * (hi - lo))
        sol = get_solver("ilp").solve(replace(problem, budget_bytes=b))
        out.append((b, np.asarray(sol.choice)))
    return out


def shortlist(profile: Profile, n: int = 8, budgets: int = 5, role_pins=None) -> list[tuple[str, str]]:
    """The (layer, format) pairs worth measuring end to end: the layers whose format flips across a sweep of
    ``budgets`` local-tier solves (the decisions the budget actually moves), ranked by local sensitivity x bytes
    saved, topped up from the other unpinned layers by the same score; each with the non-fp formats it takes
    in the sweep (its smallest format when it stays fp throughout)."""
    problem = _local_problem(profile, role_pins)
    formats, info = problem.formats, profile.info
    sweep = budget_sweep(profile, budgets, role_pins)
    chosen = np.stack([c for _, c in sweep], axis=1)  # (L, budgets)
    fp_b = problem.nbytes[:, 0]
    rows = []
    for li in range(len(info.layers)):
        if li in problem.pins:
            continue
        taken = sorted({int(c) for c in chosen[li] if c != 0})
        if not taken:
            ok = [fi for fi in range(1, len(formats)) if np.isfinite(problem.cost[li, fi])]
            if not ok:
                continue
            taken = [min(ok, key=lambda fi: problem.nbytes[li, fi])]
        flips = len(set(chosen[li].tolist())) > 1
        score = max(problem.cost[li, fi] * (fp_b[li] - problem.nbytes[li, fi]) for fi in taken)
        rows.append((not flips, -score, li, taken))
    rows.sort()
    return [(info.layers[li].name, formats[fi]) for _, _, li, taken in rows[:n] for fi in taken]


def window_units(profile: Profile, windows: int = 4, role_pins=None) -> list[Unit]:
    """One unit per step window: the mid-budget local plan's quantized layers, each in its format, quantized
    only inside the window (grouped by format, since a unit has one format: one unit per window and format)."""
    sweep = budget_sweep(profile, 3, role_pins)
    _, choice = sweep[len(sweep) // 2]
    formats, names = profile.formats, profile.info.names
    by_fmt: dict[str, list[str]] = {}
    for li, fi in enumerate(choice):
        if fi:
            by_fmt.setdefault(formats[fi], []).append(names[li])
    return [Unit(tuple(ls), f, w, "mid-plan", "window")
            for w in step_windows(profile.steps, windows) for f, ls in sorted(by_fmt.items())]


def spearman(profile: Profile, res: E2EResults) -> dict:
    """Rank agreement (scipy.stats.spearmanr) between the local tier's sensitivity (rel_mse over steps) and
    the end-to-end damage of the measured single-layer units, per metric: {metric: {rho, p, n}}."""
    from scipy.stats import spearmanr

    local = layer_costs(profile, "rel_mse")
    index = {n: i for i, n in enumerate(profile.info.names)}
    pairs = [(u, local[index[u["layers"][0]], profile.formats.index(u["format"])])
             for u in res.of_kind("layer") if u["start"] == 0 and u["stop"] == profile.steps]
    out = {}
    for m in res.metrics:
        x = [c for u, c in pairs if m in u["values"]]
        y = [res.damages(u)[m] for u, _ in pairs if m in u["values"]]
        if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
            out[m] = {"rho": None, "p": None, "n": len(x)}
            continue
        r = spearmanr(x, y)
        out[m] = {"rho": round(float(r.statistic), 4), "p": float(r.pvalue), "n": len(x)}
    return out


def run_end_to_end(pipe, profile: Profile, *, shortlist_n: int = 8, windows: int = 4, content_scorer=None,
                   features=None, seeds=None, role_pins=None, progress: bool = False) -> dict:
    """The cheap end-to-end tier: the shortlist per layer, plus one unit per step window; stored in the
    profile. Returns the summary ``mpsearch profile --end-to-end --json`` prints (``cost_ratio``: generations
    made for it / generations of the exhaustive per-layer, per-format run; ``spearman`` per metric)."""
    if isinstance(shortlist_n, bool) or not isinstance(shortlist_n, int) or shortlist_n < 1:
        raise UsageError(f"shortlist must be a positive number of layers, got {shortlist_n!r}; pass e.g. --shortlist 8")
    if isinstance(windows, bool) or not isinstance(windows, int) or windows < 0:
        raise UsageError(f"windows must be a number of step windows >= 0, got {windows!r}; pass e.g. --windows 4")
    pairs = shortlist(profile, shortlist_n, role_pins=role_pins)
    units = layer_units(profile.info, pairs) + (window_units(profile, windows, role_pins) if windows else [])
    done = measure(pipe, profile, units, content_scorer=content_scorer, features=features, seeds=seeds,
                   progress=progress)
    res = load_results(profile.path, done["run"])
    exhaustive = 1 + len(exhaustive_units(profile.info, profile.formats))
    return {"run": done["run"], "units": 1 + len(units), "shortlist": [list(p) for p in pairs],
            "windows": [list(w) for w in step_windows(profile.steps, windows)] if windows else [],
            "exhaustive_units": exhaustive, "cost_ratio": round((1 + len(units)) / exhaustive, 4),
            "measured_now": done["measured"], "seconds": round(done["seconds"], 2), "spearman": spearman(profile, res),
            "metrics": res.metrics}


# ------------------------------------------------------------------------------------------- objective


def calibrate(local: np.ndarray, measured: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Map local cost -> end-to-end damage, fitted on the measured pairs: least squares of log damage on log
    local cost (a power law, monotone when the slope is positive); with fewer than 3 usable points or a
    non-positive slope, the median ratio damage / local cost. Damages at or below 0 count as the smallest
    positive measured damage (or 1e-12)."""
    local = np.asarray(local, float)
    measured = np.asarray(measured, float)
    pos = measured[measured > 0]
    floor = pos.min() if pos.size else 1e-12
    y = np.maximum(measured, floor)
    ok = local > 0
    if ok.sum() >= 3 and np.ptp(np.log(local[ok])) > 0:
        b, a = np.polyfit(np.log(local[ok]), np.log(y[ok]), 1)
        if b > 0:
            return lambda c: np.where(np.asarray(c) > 0, np.exp(a + b * np.log(np.maximum(c, 1e-300))), 0.0)
    ratio = float(np.median(y[ok] / local[ok])) if ok.any() else 0.0
    return lambda c: np.asarray(c) * ratio


def parse_weights(spec) -> dict[str, float]:
    """'content=1,quality=1' (or a dict) -> {"content": 1.0, "quality": 1.0}; other names are metrics
    (e.g. 'ssim=1,frechet=2') and weigh that metric alone."""
    if spec is None:
        return {"content": 1.0, "quality": 1.0}
    items = spec.items() if isinstance(spec, dict) else (p.split("=", 1) for p in str(spec).split(",") if p.strip())
    out = {}
    for item in items:
        if len(item) != 2:
            raise UsageError(f"weights {spec!r} must look like content=1,quality=1")
        k, v = item
        k = str(k).strip()
        if k not in ("content", "quality") and k not in METRIC_KIND:
            raise UsageError(f"weights name {k!r}; expected content, quality or a metric "
                             f"({', '.join(METRIC_KIND)}), e.g. content=1,quality=1")
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise UsageError(f"weight {k}={v!r} is not a number; write e.g. {k}=1") from None
        if not np.isfinite(v) or v < 0:
            raise UsageError(f"weight {k}={v} must be a finite number >= 0")
        out[k] = v
    if not out or sum(out.values()) <= 0:
        raise UsageError(f"weights {spec!r} must have a positive sum, e.g. content=1,quality=1")
    return out


def window_step_weights(profile: Profile, res: E2EResults, weights: dict) -> np.ndarray | None:
    """Timestep weights from the window units: step s in window w gets (the window's combined end-to-end
    damage) / (the same plan's local error summed over the window), so the local tier's per-step errors,
    weighted, add up per window like the measured damage. None without window units."""
    wins = res.of_kind("window")
    if not wins:
        return None
    combined = _combine({u["key"]: res.damages(u) for u in wins}, weights)
    err = np.nan_to_num(profile.metric("rel_mse"))
    index = {n: i for i, n in enumerate(profile.info.names)}
    per_window: dict[tuple[int, int], list[float]] = {}
    for u in wins:
        li = [index[n] for n in u["layers"] if n in index]
        fi = profile.formats.index(u["format"])
        local = float(err[li, fi, u["start"]:u["stop"]].sum())
        d = per_window.setdefault((u["start"], u["stop"]), [0.0, 0.0])
        d[0] += combined[u["key"]]
        d[1] += local
    top = max(d for d, _ in per_window.values())
    w = np.zeros(profile.steps)
    for (a, b), (d, local) in per_window.items():
        w[a:b] = max(d, 1e-3 * top) / max(local, 1e-30)
    if not np.isfinite(w).all() or w.sum() <= 0:
        return None
    return w / w.sum()


def _combine(damages: dict[str, dict], weights: dict) -> dict[str, float]:
    """Combine per-metric damages of several entries: each metric normalized by its largest value over the
    entries, averaged within its kind, kinds (or single metrics) weighted by ``weights``."""
    metrics = sorted({m for d in damages.values() for m in d})
    top = {m: max((max(d.get(m, 0.0), 0.0) for d in damages.values()), default=0.0) for m in metrics}
    out = {}
    for k, d in damages.items():
        total = 0.0
        for name, w in weights.items():
            group = OBJECTIVE_METRICS.get(name, (name,))
            vals = [max(d[m], 0.0) / top[m] for m in group if m in d and top[m] > 0]
            total += w * (float(np.mean(vals)) if vals else 0.0)
        out[k] = total
    return out


def e2e_costs(profile: Profile, weights=None, *, res: E2EResults | None = None, step_weights=None,
              max_damage: float | None = None, keep=None) -> tuple[np.ndarray, dict]:
    """(layers, formats) costs of the decoupled objective, and a report of how they were made.

    Per metric: measured single-layer damages where measured, else the calibrated local estimate
    (:func:`calibrate`, on local costs aggregated with ``step_weights`` or, by default, the weights the window
    units give); each metric normalized by its largest value; content and quality metrics averaged within their
    kind and weighted by ``weights`` ('content=1,quality=1'). ``max_damage`` (minimax): a (layer, format) whose
    combined damage, as a fraction of the largest, exceeds it is ruled out (fp, and the pairs in ``keep``
    ({layer: format}, e.g. role pins), always stay allowed).
    """
    weights = parse_weights(weights)
    if res is None:
        res = load_results(profile.path) if profile.path is not None else None
    if res is None or not res.of_kind("layer"):
        raise ProfileError(f"profile {profile.path} has no end-to-end measurements of single layers; run "
                           "`mpsearch profile --end-to-end` first (or solve without --weights)")
    if step_weights is None:
        step_weights = window_step_weights(profile, res, weights)
    local = layer_costs(profile, "rel_mse", step_weights)
    L, F = local.shape
    index = {n: i for i, n in enumerate(profile.info.names)}
    measured = {}
    for u in res.of_kind("layer"):
        if u["start"] == 0 and u["stop"] == profile.steps and u["layers"][0] in index:
            measured[(index[u["layers"][0]], profile.formats.index(u["format"]))] = res.damages(u)
    used = sorted({m for name in weights for m in OBJECTIVE_METRICS.get(name, (name,))} & set(res.metrics))
    if not used:
        raise ProfileError(f"the end-to-end run stores none of the metrics the weights use ({', '.join(weights)}); "
                           f"it has {', '.join(res.metrics)}: weigh those, or measure with a scorer/features")
    per_metric = {}
    fits = {}
    finite = np.isfinite(local)
    for m in used:
        keys = [k for k in measured if m in measured[k]]
        fit = calibrate(np.array([local[k] for k in keys]), np.array([measured[k][m] for k in keys]))
        est = np.where(finite, fit(np.where(finite, local, 0.0)), np.inf)
        for k in keys:
            est[k] = max(measured[k][m], 0.0)
        est[:, 0] = 0.0
        top = est[np.isfinite(est)].max()
        per_metric[m] = est / top if top > 0 else est
        fits[m] = len(keys)
    cost = np.zeros((L, F))
    for name, w in weights.items():
        group = [m for m in OBJECTIVE_METRICS.get(name, (name,)) if m in per_metric]
        if group and w > 0:
            cost = cost + w * np.mean([np.where(finite, per_metric[m], 0.0) for m in group], axis=0)
    cost = np.where(finite, cost, np.inf)
    ruled_out = 0
    if max_damage is not None:
        if not 0 < float(max_damage) <= 1:
            raise UsageError(f"max_damage must be in (0, 1] (a fraction of the largest damage), got {max_damage}")
        top = cost[np.isfinite(cost)].max()
        over = np.isfinite(cost) & (cost > float(max_damage) * top)
        over[:, 0] = False
        for name, f in (keep or {}).items():
            over[index[name], profile.formats.index(f)] = False
        ruled_out = int(over.sum())
        cost = np.where(over, np.inf, cost)
    report = {"run": res.run, "weights": weights, "metrics": used, "measured_pairs": len(measured),
              "estimated_pairs": int(np.isfinite(local[:, 1:]).sum()) - len(measured),
              "calibration": "log-log least squares of damage on local rel_mse, per metric (median ratio fallback)",
              "step_weights": None if step_weights is None else [round(float(x), 6) for x in step_weights],
              "max_damage": max_damage, "ruled_out": ruled_out}
    return cost, report


def activation_overrides(profile: Profile, assignment: dict, windows: int, res: E2EResults | None = None,
                         weights=None) -> list[dict]:
    """Per-window activation overrides: in the ``windows`` step windows with the largest measured damage
    (only those above the average window's), the plan's layers whose format quantizes activations keep them
    in fp; weights stay one packed copy per layer."""
    if not windows:
        return []
    res = res if res is not None else load_results(profile.path)
    if res is None or not res.of_kind("window"):
        raise ProfileError("per-window activation overrides need window measurements; run `mpsearch profile "
                           "--end-to-end` with --windows > 0")
    combined = _combine({u["key"]: res.damages(u) for u in res.of_kind("window")}, parse_weights(weights))
    per: dict[tuple[int, int], float] = {}
    for u in res.of_kind("window"):
        per[(u["start"], u["stop"])] = per.get((u["start"], u["stop"]), 0.0) + combined[u["key"]]
    mean = float(np.mean(list(per.values())))
    worst = [w for w, d in sorted(per.items(), key=lambda kv: -kv[1]) if d > mean][:int(windows)]
    acts = {n: "fp" for n, f in assignment.items() if f != "fp" and get_format(f).quantizes_activations}
    if not acts:
        return []
    return [{"steps": [a, b], "activations": dict(acts)} for a, b in sorted(worst)]


__all__ = ["Unit", "FP_UNIT", "measure", "load_results", "E2EResults", "shortlist", "window_units", "spearman",
           "run_end_to_end", "e2e_costs", "calibrate", "parse_weights", "activation_overrides", "exhaustive_units",
           "group_units", "layer_units", "step_windows", "score_images", "default_scorers", "quantized",
           "METRIC_KIND", "OBJECTIVE_METRICS", "damage"]

"""Search solver "optuna": refine the exact solver's answers with an objective that need not be additive.

The ILP minimizes a sum of per-layer errors measured one layer at a time; the real error of a plan (its
images against full precision) is not such a sum. This solver searches the same feasible set with Optuna,
scoring each candidate with an ``evaluate`` callback (e.g. a few real generations, see
:func:`mpsearch.allocation.refine.evaluation_objective`), and returns the best candidate found.

How a solve runs
----------------
1. The seed solver (default ``"cbc"``, the exact ILP) solves the problem at the budget and at a few smaller budgets
   (``seed_fractions``); each distinct answer, then each of ``seeds`` (explicit per-layer choices), goes into
   the study as a first trial (``study.enqueue_trial``). The exact answer at the full budget comes first
   and is the reference every other trial is compared with.
2. Optuna (NSGA-II or TPE, seeded) proposes one format per decision (tie group or single layer) for the
   remaining trials. A proposal that breaks a constraint is recorded as infeasible (Optuna's
   trial constraints) without calling ``evaluate``, so no expensive evaluation is spent on it.
3. The study is multi-objective: total bytes and every named error in ``objectives``, all minimized; its
   Pareto front is kept on ``self.study``. The returned answer is the feasible trial with the lowest
   ``sum_i weights[i] * error_i / reference_error_i`` (ties: the earlier trial).

Storage: in memory by default; any SQLAlchemy URL (``sqlite:///study.db``, ``postgresql://...``) makes the
study durable and shared: a study with the same name (by default a digest of the problem and the
objectives) is loaded and continued (``load_if_exists``), seeds are not enqueued twice, and ``trials`` is
the total number of finished trials to reach, so an interrupted search resumes and several workers on
several machines can run one study together.

Status "feasible" (no optimality proof). Deterministic for a given ``seed`` when one worker runs it and
``evaluate`` is deterministic.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from mpsearch.allocation.solvers.base import BaseSolver, NoSolutionFoundError
from mpsearch.allocation.solvers.feasibility import extra_tolerance, min_feasible_bytes
from mpsearch.allocation.solvers.problem import Problem
from mpsearch.allocation.solvers.registry import DEFAULT_SOLVER, get_solver, register_solver
from mpsearch.errors import InfeasibleError, OptionalDependencyError, UsageError

SAMPLERS = ("nsga2", "tpe")


def _import_optuna():
    try:
        import optuna
    except ImportError:  # pragma: no cover - optuna is a core dependency
        raise OptionalDependencyError("the 'optuna' solver needs Optuna: pip install optuna") from None
    return optuna


@contextlib.contextmanager
def _quiet_optuna(optuna):
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            warnings.simplefilter("ignore", FutureWarning)  # constraints_func on Optuna 5 (only used on 4)
            yield
    finally:
        optuna.logging.set_verbosity(level)


def problem_digest(problem: Problem, objectives: Sequence[str] = ()) -> str:
    """A short digest of everything that defines a problem (and the objective names): the default study name."""
    h = hashlib.sha256()
    for arr in (problem.cost, problem.nbytes):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(repr((problem.layer_names, problem.formats, problem.fixed_bytes, problem.budget_bytes, problem.groups,
                   sorted(problem.pins.items()), tuple(objectives))).encode())
    for con in problem.extra:
        h.update(con.name.encode() + np.ascontiguousarray(con.coef).tobytes() + repr(con.rhs).encode())
    return h.hexdigest()[:16]


@register_solver
class OptunaSolver(BaseSolver):
    """Optuna search seeded by an exact solver (see the module docstring).

    Options: ``trials`` (finished trials to reach, default 50), ``evaluate`` (callable: per-layer choice ->
    float, or a mapping objective name -> float, lower is better; default: the problem's own objective),
    ``objectives`` (names of the values ``evaluate`` returns; default ``("predicted",)``), ``weights`` (one
    per objective for choosing the answer, default all 1), ``sampler`` ("nsga2" or "tpe"), ``seed``,
    ``storage`` (None: in memory; or an SQLAlchemy URL), ``study_name`` (default: a digest of the problem),
    ``seed_solver`` (default "cbc"; None for none), ``seed_fractions`` (budgets, as fractions of the budget,
    at which the seed solver's answers are enqueued), ``seeds`` (more per-layer choices to enqueue),
    ``callback`` (called after each trial with the finished trial, e.g. to show progress).
    """

    name = "optuna"

    def __init__(self, *, trials: int = 50, evaluate: Callable | None = None,
                 objectives: Sequence[str] = ("predicted",),
                 weights: Sequence[float] | None = None, sampler: str = "nsga2", seed: int = 0,
                 storage: str | None = None, study_name: str | None = None, seed_solver: str | None = DEFAULT_SOLVER,
                 seed_fractions: Sequence[float] = (1.0, 0.99, 0.98, 0.96, 0.93, 0.9), seeds: Sequence = (),
                 callback: Callable | None = None):
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise UsageError(f"optuna: trials must be an integer >= 1, got {trials!r}; pass e.g. --trials 30")
        if evaluate is not None and not callable(evaluate):
            raise UsageError(f"optuna: evaluate must be a callable choice -> float or mapping, got {evaluate!r}")
        objectives = tuple(objectives)
        if not objectives or not all(isinstance(o, str) and o for o in objectives) or "bytes" in objectives:
            raise UsageError(f"optuna: objectives must be non-empty names other than 'bytes', got {objectives!r}")
        weights = (1.0,) * len(objectives) if weights is None else tuple(float(w) for w in weights)
        if len(weights) != len(objectives) or not all(math.isfinite(w) and w >= 0 for w in weights):
            raise UsageError(f"optuna: weights must be {len(objectives)} finite numbers >= 0, got {weights!r}")
        if sampler not in SAMPLERS:
            raise UsageError(f"optuna: sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise UsageError(f"optuna: seed must be an integer >= 0, got {seed!r}")
        if storage is not None and not isinstance(storage, str):
            raise UsageError(f"optuna: storage must be an SQLAlchemy URL such as sqlite:///study.db, got {storage!r}")
        if seed_solver is not None:
            get_solver(seed_solver)  # an unknown name fails now, with the valid names
        fractions = tuple(float(f) for f in seed_fractions)
        if not all(0 < f <= 1 for f in fractions):
            raise UsageError(f"optuna: seed_fractions must lie in (0, 1], got {seed_fractions!r}")
        self.trials, self.evaluate, self.objectives, self.weights = trials, evaluate, objectives, weights
        self.sampler, self.seed, self.storage, self.study_name = sampler, seed, storage, study_name
        self.seed_solver, self.seed_fractions = seed_solver, fractions
        self.seeds, self.callback = tuple(seeds), callback
        self.study = None  #: the Optuna study of the last solve
        self.report: dict = {}  #: what the last solve found: reference and chosen trials, counts

    # ------------------------------------------------------------------------------------------ search
    def _seed_choices(self, problem: Problem) -> list[tuple[str, np.ndarray]]:
        out: list[tuple[str, np.ndarray]] = []
        if self.seed_solver is not None:
            engine = get_solver(self.seed_solver)
            budgets = [None] if problem.budget_bytes is None else sorted(
                {max(min_feasible_bytes(problem), int(problem.budget_bytes * f)) for f in self.seed_fractions},
                reverse=True)
            for i, budget in enumerate(budgets):
                try:
                    sol = engine.solve(problem.with_budget(budget))
                except InfeasibleError:
                    if i == 0:
                        raise  # infeasible at the budget itself: the exact solver's error is the answer
                    continue
                out.append((f"{self.seed_solver}@{budget}", np.asarray(sol.choice)))
        for k, choice in enumerate(self.seeds):
            choice = np.asarray(choice, dtype=np.int64)
            if choice.shape != (problem.n_layers,):
                raise UsageError(f"optuna: seeds[{k}] has shape {choice.shape}, expected ({problem.n_layers},)")
            out.append((f"seed{k}", choice))
        return out

    def _values(self, choice: np.ndarray, problem: Problem) -> list[float]:
        if self.evaluate is None:
            value: object = problem.objective(choice)
        else:
            value = self.evaluate(choice)
        if isinstance(value, Mapping):
            missing = [o for o in self.objectives if o not in value]
            if missing:
                raise UsageError(f"optuna: evaluate returned {sorted(value)}, without {missing}; return every "
                                 f"objective in {list(self.objectives)}")
            values = [float(value[o]) for o in self.objectives]
        elif len(self.objectives) == 1:
            values = [float(value)]  # type: ignore[arg-type]
        else:
            raise UsageError(f"optuna: evaluate returned {value!r}; with several objectives return a mapping of "
                             f"{list(self.objectives)}")
        if not all(math.isfinite(v) for v in values):
            raise UsageError(f"optuna: evaluate returned non-finite values {values}; it must return finite errors")
        return values

    def _solve(self, problem: Problem) -> tuple[np.ndarray, bool]:
        optuna = _import_optuna()
        dec = problem.decisions
        options = [tuple(int(f) for f in np.flatnonzero(dec.allowed[d])) for d in range(dec.count)]
        limits = []
        for con in problem.extra:
            scale = float(np.abs(con.coef).max(axis=1).sum()) if con.coef.size else 0.0
            limits.append(con.rhs + extra_tolerance(con.rhs, scale) / 2)

        def violations(choice: np.ndarray) -> list[float]:
            out = [] if problem.budget_bytes is None else [float(problem.total_bytes(choice) - problem.budget_bytes)]
            return out + [con.value(choice) - lim for con, lim in zip(problem.extra, limits, strict=True)]

        def objective(trial) -> list[float]:
            picks = np.array([trial.suggest_categorical(f"d{d}", options[d]) for d in range(dec.count)],
                             dtype=np.int64)
            choice = dec.expand(picks)
            broken = violations(choice)
            feasible = all(v <= 0 for v in broken)
            trial.set_user_attr("constraints", broken or [0.0])
            if native_constraints:  # Optuna >= 5: the sampler reads these
                for k, v in enumerate(broken or [0.0]):
                    trial.set_constraint(f"c{k}", float(v))
            trial.set_user_attr("feasible", feasible)
            predicted = problem.objective(choice)
            trial.set_user_attr("predicted", predicted)
            # an infeasible proposal is not evaluated: its error is the additive prediction
            values = self._values(choice, problem) if feasible else [predicted] * len(self.objectives)
            return [float(problem.total_bytes(choice)), *values]

        def constraints(frozen) -> list[float]:
            return frozen.user_attrs.get("constraints", [0.0])

        native_constraints = hasattr(optuna.trial.Trial, "set_constraint")
        with _quiet_optuna(optuna):
            cons = {} if native_constraints else {"constraints_func": constraints}  # Optuna 4: the old way
            sampler = (optuna.samplers.NSGAIISampler(seed=self.seed, population_size=max(4, min(50, self.trials // 3)),
                                                     **cons)
                       if self.sampler == "nsga2" else
                       optuna.samplers.TPESampler(seed=self.seed, multivariate=True,
                                                  n_startup_trials=max(1, min(10, self.trials // 4)), **cons))
            name = self.study_name or f"mpsearch-{problem_digest(problem, self.objectives)}"
            _make_sqlite_folder(self.storage)
            study = optuna.create_study(storage=self.storage, sampler=sampler, study_name=name,
                                        directions=["minimize"] * (1 + len(self.objectives)), load_if_exists=True)
            self.study = study
            finished = lambda: [t for t in study.get_trials(deepcopy=False)  # noqa: E731
                                if t.state == optuna.trial.TrialState.COMPLETE]
            if not study.get_trials(deepcopy=False):
                for source, choice in self._seed_choices(problem):
                    picks = choice[[int(m[0]) for m in dec.members]]
                    study.enqueue_trial({f"d{d}": int(picks[d]) for d in range(dec.count)},
                                        user_attrs={"source": source}, skip_if_exists=True)
            remaining = self.trials - len(finished())
            if remaining > 0:
                cb = self.callback
                callbacks = [lambda s, t: cb(t)] if cb else None
                study.optimize(objective, n_trials=remaining, callbacks=callbacks, catch=())
            done = finished()

        feasible = [t for t in done if t.user_attrs.get("feasible")]
        if not feasible:
            raise NoSolutionFoundError(
                f"optuna found no plan meeting every constraint in {len(done)} trials; raise --trials or keep the "
                "seed solver (seed_solver='cbc'), whose answer is always a first trial")
        reference = next((t for t in feasible if t.user_attrs.get("source", "").endswith(f"@{problem.budget_bytes}")),
                         feasible[0])
        ref = [max(abs(v), 1e-30) for v in reference.values[1:]]

        def score(t) -> float:
            return math.fsum(w * v / r for w, v, r in zip(self.weights, t.values[1:], ref, strict=True))

        best = min(feasible, key=lambda t: (score(t), t.number))
        picks = np.array([best.params[f"d{d}"] for d in range(dec.count)], dtype=np.int64)
        self.report = {
            "study_name": name, "storage": self.storage, "trials": len(done), "feasible_trials": len(feasible),
            "objectives": ["bytes", *self.objectives],
            "reference": {"trial": reference.number, "source": reference.user_attrs.get("source"),
                          "values": list(reference.values)},
            "chosen": {"trial": best.number, "source": best.user_attrs.get("source", self.sampler),
                       "values": list(best.values), "score_vs_reference": score(best) / max(score(reference), 1e-30)},
            "pareto_front": [{"trial": t.number, "values": list(t.values)} for t in study.best_trials
                             if t.user_attrs.get("feasible")],
        }
        return dec.expand(picks), False


def _make_sqlite_folder(storage: str | None) -> None:
    """Create the folder of a local SQLite study file (``sqlite:///studies/x.db``) when the study opens."""
    prefix = "sqlite:///"
    if storage and storage.startswith(prefix) and storage[len(prefix):] not in ("", ":memory:"):
        Path(storage[len(prefix):]).parent.mkdir(parents=True, exist_ok=True)

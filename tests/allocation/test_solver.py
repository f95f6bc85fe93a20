"""The solver contract (mpsearch.allocation.solvers.BaseSolver), checked the same way for every solver.

``SolverConformance`` is the shared suite: each solver's test class subclasses it and sets ``solver_name``
(and ``exact``). The brute-force solver is the oracle; the constraint checks below are written out here,
independently of ``check_assignment``, so that a bug there cannot hide a bug in a solver.
"""

from __future__ import annotations

import functools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpsearch.allocation.solvers import (
    BaseSolver,
    Constraint,
    NoSolutionFoundError,
    Problem,
    Solution,
    SolverError,
    available_solvers,
    check_assignment,
    format_bytes,
    get_solver,
    min_feasible_bytes,
)
from mpsearch.errors import InfeasibleError, UsageError

INF = np.inf
REL = 1e-9


# ------------------------------------------------------------------------------------------- generators


def random_problem(
    seed: int, *, max_layers: int = 8, max_formats: int = 4, budget: str = "random", extra: str = "random"
) -> Problem:
    """A small random problem that is valid by construction (the budget may still bind hard).

    Costs fall as bytes rise (as with real formats) but with noise, and sometimes are small integers, so
    exact ties happen. Some entries are ineligible (inf), some layers are tied in groups or pinned, and
    sometimes there is an extra constraint. ``budget``: "random" (between min_feasible_bytes and the
    largest total), "none", or "tight" (exactly min_feasible_bytes). ``extra``: "random" (sometimes one
    constraint, limit anywhere in its range) or "tight" (always one, limit in the lowest fifth of its range:
    with a tight budget, often jointly infeasible).
    """
    rng = np.random.default_rng(seed)
    n_layers = int(rng.integers(1, max_layers + 1))
    n_formats = int(rng.integers(1, max_formats + 1))
    size = rng.integers(1, 50, size=(n_layers, 1))
    bits = np.sort(rng.choice([2, 4, 5, 8, 16, 32], size=n_formats, replace=n_formats > 6))[::-1]
    nbytes = (size * bits[None, :] + rng.integers(0, 4, size=(n_layers, n_formats))).astype(np.int64)
    if rng.random() < 0.3:
        cost = rng.integers(0, 4, size=(n_layers, n_formats)).astype(float)
    else:
        cost = rng.random((n_layers, n_formats)) * (1.0 + np.arange(n_formats))[None, :] * rng.choice([1e-3, 1, 1e3])
    if rng.random() < 0.3:
        cost[:, 0] = 0.0  # the full-precision column: zero error
    cost[rng.random(cost.shape) < 0.25] = INF

    groups: list[tuple[int, ...]] = []
    order = list(rng.permutation(n_layers))
    while len(order) >= 2 and rng.random() < 0.5:
        k = int(rng.integers(2, min(3, len(order)) + 1))
        groups.append(tuple(int(l) for l in order[:k]))
        order = order[k:]
    for l in range(n_layers):  # every layer keeps an allowed format
        if not np.isfinite(cost[l]).any():
            cost[l, int(rng.integers(n_formats))] = float(rng.random())
    for group in groups:  # every group keeps a shared allowed format
        shared = np.isfinite(cost[list(group)]).all(axis=0)
        if not shared.any():
            f = int(rng.integers(n_formats))
            cost[list(group), f] = rng.random(len(group))

    pins: dict[int, int] = {}
    for l in range(n_layers):
        if rng.random() < 0.12:
            group = next((g for g in groups if l in g), (l,))
            if any(m in pins for m in group):
                continue
            choices = np.flatnonzero(np.isfinite(cost[list(group)]).all(axis=0))
            pins[l] = int(rng.choice(choices))

    names = tuple(f"block{l}.proj" for l in range(n_layers))
    formats = tuple(f"fmt{f}" for f in range(n_formats))
    extra: tuple[Constraint, ...] = ()
    base = Problem(names, formats, cost, nbytes, groups=tuple(groups), pins=pins)
    if extra == "tight" or rng.random() < 0.3:
        coef = rng.integers(0, 10, size=(n_layers, n_formats)).astype(float) * bits[None, :] / 4
        if rng.random() < 0.5:
            coef -= 3.0  # negative coefficients too
        lo, hi = _extremes(base, coef)
        top = hi if extra == "random" else lo + (hi - lo) / 5
        extra = (Constraint("compute", coef, float(rng.uniform(lo, top))),)
    fixed = int(rng.integers(0, 100))
    base = Problem(names, formats, cost, nbytes, fixed_bytes=fixed, groups=tuple(groups), pins=pins, extra=extra)
    low = min_feasible_bytes(base)
    high = _max_bytes(base)
    chosen = {
        "none": None,
        "tight": low,
        "near": int(rng.integers(low, low + (high - low) // 4 + 1)),
        "random": int(rng.integers(low, high + 1)),
    }[budget]
    return base.with_budget(chosen)


def _extremes(problem: Problem, coef: np.ndarray) -> tuple[float, float]:
    """Smallest and largest sum of coef over assignments that keep eligibility, pins and groups."""
    dec = problem.decisions
    summed = np.zeros(dec.allowed.shape)
    for d, m in enumerate(dec.members):
        summed[d] = coef[m].sum(axis=0)
    lo = np.where(dec.allowed, summed, INF).min(axis=1).sum()
    hi = np.where(dec.allowed, summed, -INF).max(axis=1).sum()
    return float(lo), float(hi)


def _max_bytes(problem: Problem) -> int:
    lo, hi = _extremes(problem, problem.nbytes.astype(float))
    return problem.fixed_bytes + int(hi)


@functools.cache
def oracle(seed: int, budget: str = "random", extra: str = "random") -> tuple[float | None, int | None]:
    """(objective, None) from brute force, or (None, min_bytes) when it proves the problem infeasible."""
    try:
        sol = get_solver("bruteforce").solve(random_problem(seed, budget=budget, extra=extra))
    except InfeasibleError as exc:
        return None, exc.min_bytes
    return sol.objective, None


def assert_keeps_constraints(problem: Problem, sol: Solution) -> None:
    """Every constraint, checked here from first principles."""
    choice = sol.choice
    assert choice.shape == (problem.n_layers,)
    assert np.issubdtype(choice.dtype, np.integer)
    rows = np.arange(problem.n_layers)
    assert np.isfinite(problem.cost[rows, choice]).all(), "a layer took an ineligible format"
    for l, f in problem.pins.items():
        assert choice[l] == f, f"pin of layer {l} broken"
    for group in problem.groups:
        assert len({int(choice[l]) for l in group}) == 1, f"tie group {group} split"
    total = problem.fixed_bytes + sum(int(problem.nbytes[l, choice[l]]) for l in rows)
    assert sol.total_bytes == total
    if problem.budget_bytes is not None:
        assert total <= problem.budget_bytes, "over budget"
    for con in problem.extra:
        value = sum(float(con.coef[l, choice[l]]) for l in rows)
        assert value <= con.rhs + 1e-9 * max(1.0, abs(con.rhs), float(np.abs(con.coef).sum()))
    assert sol.objective == pytest.approx(sum(float(problem.cost[l, choice[l]]) for l in rows), rel=1e-12, abs=1e-12)


def all_best_objective(problem: Problem) -> float:
    dec = problem.decisions
    return float(np.where(dec.allowed, dec.cost, INF).min(axis=1).sum())


@st.composite
def problems(draw) -> Problem:
    """Hypothesis: problems drawn element by element (shrinks to small counterexamples)."""
    n_layers = draw(st.integers(1, 6))
    n_formats = draw(st.integers(1, 4))
    nbytes = np.array(
        [[draw(st.integers(0, 60)) for _ in range(n_formats)] for _ in range(n_layers)], dtype=np.int64
    )
    cell = st.one_of(st.integers(0, 8).map(float), st.floats(0, 10, allow_nan=False).map(lambda v: round(v, 6)))
    cost = np.array([[draw(cell) for _ in range(n_formats)] for _ in range(n_layers)])
    mask = np.array([[draw(st.booleans()) for _ in range(n_formats)] for _ in range(n_layers)])
    mask[np.arange(n_layers), [draw(st.integers(0, n_formats - 1)) for _ in range(n_layers)]] = False
    cost[mask] = INF
    groups = []
    if n_layers >= 2 and draw(st.booleans()):
        members = draw(st.lists(st.integers(0, n_layers - 1), min_size=2, max_size=3, unique=True))
        shared = np.isfinite(cost[members]).all(axis=0)
        if shared.any():
            groups.append(tuple(members))
    names = tuple(f"l{i}" for i in range(n_layers))
    formats = tuple(f"f{i}" for i in range(n_formats))
    base = Problem(names, formats, cost, nbytes, groups=tuple(groups))
    low, high = min_feasible_bytes(base), _max_bytes(base)
    return base.with_budget(draw(st.integers(low, high)))


# ---------------------------------------------------------------------------------- conformance suite


class SolverConformance:
    """The promises of BaseSolver. Subclass once per solver; set ``solver_name`` and ``exact``."""

    solver_name: str = ""
    exact: bool = True
    #: options for ``get_solver`` (e.g. a small trial count for a search solver)
    solver_options: dict = {}

    def solver(self) -> BaseSolver:
        return get_solver(self.solver_name, **self.solver_options)

    @pytest.mark.parametrize(
        "seed, budget, extra",
        [(s, "random", "random") for s in range(160)] + [(s, "near", "tight") for s in range(1000, 1060)],
    )
    def test_random_problem_is_solved_within_every_constraint(self, seed, budget, extra):
        problem = random_problem(seed, budget=budget, extra=extra)
        best, min_bytes = oracle(seed, budget, extra)
        if best is None:  # infeasible: only possible through the extra constraint
            assert problem.extra
            with pytest.raises((InfeasibleError,) if self.exact else (InfeasibleError, NoSolutionFoundError)) as info:
                self.solver().solve(problem)
            if self.exact:
                assert info.value.min_bytes == min_bytes
                assert "compute" in str(info.value)
            return
        solver = self.solver()
        start = time.perf_counter()
        try:
            sol = solver.solve(problem)
        except NoSolutionFoundError:
            assert not self.exact and problem.extra, "greedy must always succeed under a byte budget alone"
            return
        elapsed = time.perf_counter() - start
        assert_keeps_constraints(problem, sol)
        assert sol.solver == get_solver(self.solver_name).name
        assert 0 <= sol.seconds <= elapsed  # the wall time of solve(), in seconds: within the time around the call
        if self.exact:
            assert sol.status == "optimal"
            assert sol.objective == pytest.approx(best, rel=REL, abs=1e-12)
        else:
            assert sol.status in ("feasible", "optimal")
            assert sol.objective >= best * (1 - REL) - 1e-12

    @pytest.mark.parametrize("seed", range(30))
    def test_tight_budget(self, seed):
        problem = random_problem(seed, budget="tight")
        best, _ = oracle(seed, "tight")
        try:
            sol = self.solver().solve(problem)
        except (InfeasibleError, NoSolutionFoundError):
            assert best is None or not self.exact
            return
        assert_keeps_constraints(problem, sol)
        assert sol.total_bytes <= min_feasible_bytes(problem)
        if self.exact:
            assert sol.objective == pytest.approx(best, rel=REL, abs=1e-12)

    @pytest.mark.parametrize("seed", range(20))
    def test_budget_below_min_feasible_raises_with_the_smallest_size(self, seed):
        problem = random_problem(seed, budget="none")
        smallest = min_feasible_bytes(problem)
        if smallest == 0:
            pytest.skip("nothing is below 0 bytes")
        with pytest.raises(InfeasibleError) as info:
            self.solver().solve(problem.with_budget(smallest - 1))
        assert info.value.min_bytes == smallest
        assert f"{smallest:,} B" in str(info.value)
        assert format_bytes(smallest) in str(info.value)
        assert "--budget" in str(info.value)

    @pytest.mark.parametrize("seed", range(20))
    @pytest.mark.parametrize("budget", ["none", "all-best"])
    def test_no_binding_budget_gives_the_all_best_answer(self, seed, budget):
        problem = random_problem(seed, budget="none")
        problem = Problem(problem.layer_names, problem.formats, problem.cost, problem.nbytes,
                          fixed_bytes=problem.fixed_bytes, groups=problem.groups, pins=problem.pins)
        dec = problem.decisions
        best_choice = dec.expand(dec.best())
        if budget == "all-best":
            problem = problem.with_budget(problem.total_bytes(best_choice))
        sol = self.solver().solve(problem)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(all_best_objective(problem), rel=REL, abs=1e-12)
        assert np.array_equal(sol.choice, best_choice)

    @pytest.mark.parametrize("seed", range(10))
    def test_same_input_same_answer(self, seed):
        problem = random_problem(seed)
        try:
            first = self.solver().solve(problem)
        except (InfeasibleError, NoSolutionFoundError):
            return
        again = random_problem(seed)  # an equal problem built afresh
        assert np.array_equal(first.choice, self.solver().solve(again).choice)
        assert np.array_equal(first.choice, self.solver().solve(problem).choice)

    def test_extra_constraint_that_cannot_hold_is_named(self):
        cost = np.array([[0.0, 1.0], [0.0, 2.0]])
        nbytes = np.array([[4, 1], [4, 1]])
        compute = Constraint("compute", np.array([[5.0, 3.0], [5.0, 3.0]]), rhs=5.0)
        problem = Problem(("a", "b"), ("fp", "int4"), cost, nbytes, budget_bytes=8, extra=(compute,))
        with pytest.raises(InfeasibleError, match="'compute'") as info:
            self.solver().solve(problem)
        assert info.value.min_bytes is None
        assert "6" in str(info.value)  # its smallest reachable value

    def test_budget_and_extra_feasible_alone_but_not_together(self):
        # int4 saves bytes but costs compute: the budget wants int4 on both, compute allows one.
        cost = np.array([[0.0, 1.0], [0.0, 2.0]])
        nbytes = np.array([[4, 1], [4, 1]])
        compute = Constraint("compute", np.array([[1.0, 3.0], [1.0, 3.0]]), rhs=4.0)
        problem = Problem(("a", "b"), ("fp", "int4"), cost, nbytes, budget_bytes=2, extra=(compute,))
        with pytest.raises((InfeasibleError,) if self.exact else (InfeasibleError, NoSolutionFoundError)) as info:
            self.solver().solve(problem)
        if self.exact:
            assert info.value.min_bytes == 5
            assert "'compute'" in str(info.value) and "5 B" in str(info.value)
        sol = self.solver().solve(problem.with_budget(5))
        assert_keeps_constraints(problem.with_budget(5), sol)
        assert sol.objective == 1.0 if self.exact else sol.objective >= 1.0

    def test_extra_constraints_that_contradict_each_other(self):
        # 'speed' wants int4 everywhere, 'quality' wants fp everywhere: each alone is fine, not both.
        speed = Constraint("speed", np.array([[1.0, 0.0], [1.0, 0.0]]), rhs=0.0)
        quality = Constraint("quality", np.array([[0.0, 1.0], [0.0, 1.0]]), rhs=0.0)
        problem = Problem(("a", "b"), ("fp", "int4"), np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[4, 1], [4, 1]]),
                          budget_bytes=6, extra=(speed, quality))
        with pytest.raises((InfeasibleError,) if self.exact else (InfeasibleError, NoSolutionFoundError)) as info:
            self.solver().solve(problem)
        if self.exact:
            assert info.value.min_bytes is None
            assert "'speed', 'quality' cannot all hold at once" in str(info.value)

    def test_pins_and_groups_on_a_worked_example(self):
        # q, k, v tied; out pinned to fp. All fp is 10 + 48 B; the budget 10 + 40 needs 8 B saved:
        # the qkv group in int8 saves 12 for 3 x 1, mlp in int8 saves 8 for 4, the group in int4 costs 15.
        names = ("q", "k", "v", "out", "mlp")
        cost = np.array([[0, 1, 5], [0, 1, 5], [0, 1, 5], [0, 0.5, 1], [0, 4, INF]], dtype=float)
        nbytes = np.array([[8, 4, 2]] * 4 + [[16, 8, 4]])
        problem = Problem(names, ("fp", "int8", "int4"), cost, nbytes, fixed_bytes=10, budget_bytes=10 + 40,
                          groups=((0, 1, 2),), pins={3: 0})
        sol = self.solver().solve(problem)
        assert_keeps_constraints(problem, sol)
        if self.exact:
            assert sol.assignment(problem) == {"q": "int8", "k": "int8", "v": "int8", "out": "fp", "mlp": "fp"}
            assert sol.objective == 3.0 and sol.total_bytes == 10 + 12 + 8 + 16

    def test_hypothesis_problems_match_the_oracle(self):
        # Wrapped per call: the suite runs once per subclass, and hypothesis wants one executor per test.
        @given(problem=problems())
        @settings(max_examples=30, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
        def check(problem):
            best = get_solver("bruteforce").solve(problem)
            sol = self.solver().solve(problem)
            assert_keeps_constraints(problem, sol)
            if self.exact:
                assert sol.objective == pytest.approx(best.objective, rel=REL, abs=1e-12)
            else:
                assert sol.objective >= best.objective * (1 - REL) - 1e-12

        check()


class ExactSolverConformance(SolverConformance):
    """What exact solvers promise on top: the oracle's objective (checked above) and monotonicity."""

    @pytest.mark.parametrize("seed", range(25))
    def test_larger_budget_is_never_worse(self, seed):
        problem = random_problem(seed, budget="none")
        low, high = min_feasible_bytes(problem), _max_bytes(problem)
        objectives = []
        for budget in np.unique(np.linspace(low, high, 6).round().astype(int)):
            try:
                objectives.append(self.solver().solve(problem.with_budget(int(budget))).objective)
            except InfeasibleError:
                assert not objectives, "feasible at a smaller budget, infeasible at a larger one"
        for smaller, larger in zip(objectives, objectives[1:]):
            assert larger <= smaller * (1 + REL) + 1e-12



class TestCbcConformance(ExactSolverConformance):
    solver_name = "cbc"


class TestHighsConformance(ExactSolverConformance):
    solver_name = "highs"


class TestBruteForceConformance(ExactSolverConformance):
    solver_name = "bruteforce"


class TestGreedyConformance(SolverConformance):
    solver_name = "greedy"
    exact = False


class TestRandomConformance(SolverConformance):
    solver_name = "random"
    exact = False


class TestOptunaConformance(SolverConformance):
    """The search solver with its default objective (the problem's own, cheap); the ILP seeds it."""

    solver_name = "optuna"
    exact = False
    solver_options = {"trials": 6}


def test_every_registered_solver_has_a_conformance_class():
    def leaves(cls):
        subs = cls.__subclasses__()
        return [c for s in subs for c in leaves(s)] if subs else [cls]

    covered = {cls.solver_name for cls in leaves(SolverConformance)}
    assert covered == set(available_solvers())


# --------------------------------------------------------------------------------- problem validation


def _good(**overrides):
    kwargs = dict(
        layer_names=("a", "b", "c"),
        formats=("fp", "int8"),
        cost=np.array([[0.0, 1.0], [0.0, INF], [0.0, 2.0]]),
        nbytes=np.array([[4, 2], [4, 2], [4, 2]]),
    )
    kwargs.update(overrides)
    return kwargs


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(cost=np.zeros((2, 2))), r"Problem.cost has shape \(2, 2\), expected \(3, 2\)"),
        (dict(nbytes=np.zeros((3, 3), dtype=int)), r"Problem.nbytes has shape \(3, 3\)"),
        (dict(cost=np.array([[0.0, -1.0], [0, 0], [0, 0]])), r"Problem.cost\[0, 1\] .* is -1.0"),
        (dict(cost=np.array([[0.0, np.nan], [0, 0], [0, 0]])), r"Problem.cost\[0, 1\] .* is nan"),
        (dict(cost=np.array([[0.0, -INF], [0, 0], [0, 0]])), r"Problem.cost\[0, 1\]"),
        (dict(cost=np.array([[0.0, 1], [INF, INF], [0, 0]])), r"layer 'b'\) is inf for every format"),
        (dict(nbytes=np.array([[4.0, 2], [4, 2], [4, 2]])), "nbytes must hold integers"),
        (dict(nbytes=np.array([[4, -2], [4, 2], [4, 2]])), r"Problem.nbytes\[0, 1\] .* is -2"),
        (dict(layer_names=("a", "a", "c")), "Problem.layer_names has 'a' twice"),
        (dict(layer_names="abc"), "Problem.layer_names must be a sequence of names"),
        (dict(formats=()), "Problem.formats is empty"),
        (dict(fixed_bytes=-1), "Problem.fixed_bytes must be an integer >= 0, got -1"),
        (dict(fixed_bytes=1.5), "Problem.fixed_bytes must be an integer >= 0, got 1.5"),
        (dict(budget_bytes=-5), "Problem.budget_bytes must be None or an integer >= 0, got -5"),
        (dict(budget_bytes=True), "Problem.budget_bytes must be None or an integer >= 0, got True"),
        (dict(groups=((0, 3),)), r"Problem.groups\[0\] has 3, not a layer index in \[0, 3\)"),
        (dict(groups=((0, 2), (2,))), r"Problem.groups\[1\] has layer 2 in groups\[0\] too"),
        (dict(groups=((0, 0),)), r"Problem.groups\[0\] has layer 0 twice"),
        (dict(groups=((),)), r"Problem.groups\[0\] is empty"),
        (dict(pins={5: 0}), "Problem.pins has key 5"),
        (dict(pins={0: 2}), r"Problem.pins\[0\] is 2, not a format index"),
        (dict(pins={1: 1}), r"Problem.pins\[1\] pins layer 'b' to format 'int8', which it may not take"),
        (dict(groups=((0, 1),), pins={0: 1}), "but layer 'b' in that group may not take it"),
        (dict(groups=((0, 2),), pins={0: 0, 2: 1}), "Problem.pins disagree inside one tie group"),
        (dict(extra=(Constraint("c", np.zeros((3, 3)), 1.0),)), r"Problem.extra\[0\] \('c'\) has coef shape"),
        (dict(extra=(Constraint("c", np.zeros((3, 2)), 1.0),) * 2), "two constraints named 'c'"),
        (dict(extra=("compute",)), r"Problem.extra\[0\] must be a Constraint"),
    ],
)
def test_problem_validation_names_the_field_and_value(overrides, message):
    with pytest.raises(UsageError, match=message):
        Problem(**_good(**overrides))


def test_group_without_a_shared_format_is_an_error():
    cost = np.array([[0.0, INF], [INF, 0.0]])
    with pytest.raises(UsageError, match=r"Problem.groups\[0\] members share no allowed format"):
        Problem(("a", "b"), ("x", "y"), cost, np.ones((2, 2), dtype=int), groups=((0, 1),))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(name="", coef=np.zeros((1, 1)), rhs=0.0), "Constraint.name must be a non-empty string"),
        (dict(name="c", coef=np.zeros(3), rhs=0.0), "coef must be 2-D"),
        (dict(name="c", coef=np.array([[INF]]), rhs=0.0), "coefficients must be finite"),
        (dict(name="c", coef=np.zeros((1, 1)), rhs=float("nan")), "rhs must be finite"),
        (dict(name="c", coef=np.zeros((1, 1)), rhs="1"), "rhs must be a number"),
    ],
)
def test_constraint_validation(kwargs, message):
    with pytest.raises(UsageError, match=message):
        Constraint(**kwargs)


def test_problem_copies_and_freezes_its_arrays():
    kwargs = _good()
    problem = Problem(**kwargs)
    kwargs["cost"][0, 1] = 99.0
    assert problem.cost[0, 1] == 1.0
    for array in (problem.cost, problem.nbytes, problem.decisions.cost, problem.decisions.allowed):
        with pytest.raises(ValueError):
            array[0, 0] = 1
    with pytest.raises(TypeError):
        problem.pins[0] = 0  # type: ignore[index]


def test_a_pin_inside_a_group_pins_the_group():
    problem = Problem(**_good(groups=((0, 2),), pins={2: 1}, budget_bytes=100))
    sol = get_solver("cbc").solve(problem)
    assert sol.assignment(problem) == {"a": "int8", "b": "fp", "c": "int8"}


def test_min_feasible_bytes_on_a_worked_example():
    # a: {4, 2}; b: {4} (int8 ineligible); c: {4, 2}; group (a, b) can only share fp: 8; c alone: 2.
    assert min_feasible_bytes(Problem(**_good(fixed_bytes=7, groups=((0, 1),)))) == 7 + 8 + 2
    assert min_feasible_bytes(Problem(**_good(pins={2: 0}))) == 2 + 4 + 4
    # a group's best format is the best sum, not each member's best: (2+9) beats (9+1).
    cost = np.zeros((2, 2))
    problem = Problem(("a", "b"), ("x", "y"), cost, np.array([[2, 9], [9, 1]]), groups=((0, 1),))
    assert min_feasible_bytes(problem) == 10


def test_min_feasible_bytes_matches_enumeration():
    import itertools

    for seed in range(40):
        problem = random_problem(seed, budget="none")
        best = None
        for combo in itertools.product(range(problem.n_formats), repeat=problem.n_layers):
            choice = np.array(combo)
            if not check_assignment(problem, choice):
                total = problem.total_bytes(choice)
                best = total if best is None else min(best, total)
        assert best == min_feasible_bytes(problem)


def test_solution_assignment_and_validation():
    problem = Problem(**_good())
    sol = get_solver("greedy").solve(problem)
    assert sol.assignment(problem) == {"a": "fp", "b": "fp", "c": "fp"}
    with pytest.raises(UsageError, match="pass the problem it was solved for"):
        sol.assignment(Problem(("x",), ("fp",), np.zeros((1, 1)), np.ones((1, 1), dtype=int)))
    with pytest.raises(UsageError, match="Solution.status"):
        Solution(np.zeros(1, dtype=int), 0.0, 0, "great", "x", 0.0)
    with pytest.raises(ValueError):
        sol.choice[0] = 1


def test_check_assignment_lists_every_violation():
    problem = Problem(**_good(groups=((0, 2),), pins={1: 0}, budget_bytes=7,
                              extra=(Constraint("compute", np.ones((3, 2)), rhs=2.0),)))
    broken = check_assignment(problem, np.array([0, 1, 1]))
    text = " | ".join(broken)
    assert "'b' takes 'int8', which it may not take" in text
    assert "pinned to 'fp'" in text
    assert "tie group 0 mixes formats" in text
    assert "total 8 B is over the budget 7 B" in text
    assert "extra constraint 'compute'" in text
    assert check_assignment(problem, np.array([0, 0, 0])) == ["total 12 B is over the budget 7 B",
                                                              "extra constraint 'compute' is 3, over its limit 2"]
    assert check_assignment(problem, np.array([0, 0])) == ["choice has shape (2,), expected (3,)"]


def test_format_bytes_uses_decimal_units():
    assert format_bytes(612_345) == "612.3 KB"
    assert format_bytes(999) == "999 B"
    assert format_bytes(4 * 10**9) == "4.0 GB"


# ------------------------------------------------------------------------------------------ registry


def test_registry_names_aliases_and_options():
    assert set(available_solvers()) == {"cbc", "highs", "greedy", "bruteforce", "optuna", "random"}
    assert get_solver(" CBC ").name == "cbc"
    assert get_solver("cbc", time_limit=30).time_limit == 30.0
    with pytest.raises(UsageError, match=r"unknown solver 'simplex'; valid names: bruteforce, cbc, greedy, highs, optuna, random"):
        get_solver("simplex")
    with pytest.raises(UsageError, match=r"the exact ILP solvers are cbc \(CBC, the default\) and highs"):
        get_solver("ilp")  # the engines are named for what they run: "ilp" would not say which
    with pytest.raises(UsageError, match=r"solver 'greedy' does not take option\(s\) 'threads'; it takes: no options"):
        get_solver("greedy", threads=4)
    with pytest.raises(UsageError, match="it takes: time_limit"):
        get_solver("highs", gap=0.1)
    with pytest.raises(UsageError, match="time_limit must be a number of seconds > 0"):
        get_solver("cbc", time_limit=0)


def test_register_solver_refuses_a_taken_name():
    from mpsearch.allocation.solvers import register_solver

    class Impostor(BaseSolver):
        name = "cbc"

        def _solve(self, problem):
            raise AssertionError

    with pytest.raises(UsageError, match="solver name 'cbc' is taken by PulpCbcSolver"):
        register_solver(Impostor)


def test_a_solver_bug_raises_instead_of_returning_a_bad_plan():
    class OverBudget(BaseSolver):
        name = "overbudget"

        def _solve(self, problem):
            return np.zeros(problem.n_layers, dtype=np.int64), True

    problem = Problem(**_good(budget_bytes=10))
    with pytest.raises(SolverError, match=r"'overbudget' returned a plan that breaks the constraints .*over the budget"):
        OverBudget().solve(problem)
    with pytest.raises(UsageError, match="expects a Problem"):
        OverBudget().solve("problem")  # type: ignore[arg-type]


def test_bruteforce_refuses_huge_problems():
    n = 11  # 4**11 > 1e6
    problem = Problem(tuple(f"l{i}" for i in range(n)), ("a", "b", "c", "d"), np.tile([0.0, 1, 2, 3], (n, 1)),
                      np.tile([8, 4, 2, 1], (n, 1)), budget_bytes=3 * n)
    with pytest.raises(UsageError, match=r"4,194,304 assignments, more than its limit of 1,000,000; use --solver cbc"):
        get_solver("bruteforce").solve(problem)
    assert get_solver("bruteforce", max_combinations=5_000_000).solve(problem).objective == pytest.approx(
        get_solver("cbc").solve(problem).objective)


def test_ilp_and_highs_agree_on_a_mid_sized_problem():
    rng = np.random.default_rng(7)
    n = 300
    nbytes = (rng.integers(100, 10_000, size=(n, 1)) * np.array([16, 8, 4.5, 4])).astype(np.int64)
    cost = rng.random((n, 4)) * np.array([0, 1, 3, 4])
    cost[rng.random((n, 4)) < 0.1] = INF
    cost[:, 0] = 0.0
    groups = tuple((i, i + 1, i + 2) for i in range(0, 90, 3))
    problem = Problem(tuple(f"l{i}" for i in range(n)), ("fp", "int8", "nvfp4", "int4"), cost, nbytes,
                      groups=groups, pins={200: 1})
    budget = (min_feasible_bytes(problem) + int(nbytes[:, 0].sum())) // 2
    problem = problem.with_budget(budget)
    ilp, highs, greedy = (get_solver(s).solve(problem) for s in ("cbc", "highs", "greedy"))
    assert ilp.objective == pytest.approx(highs.objective, rel=1e-7)
    assert greedy.objective >= ilp.objective * (1 - 1e-9)
    for sol in (ilp, highs, greedy):
        assert_keeps_constraints(problem, sol)


def test_large_byte_counts_stay_exact():
    # Realistic sizes: tens of MB per layer; the budget is met to the byte.
    n = 50
    rng = np.random.default_rng(3)
    shape_elems = rng.integers(10**6, 6 * 10**7, size=n)
    nbytes = np.stack([shape_elems * 2, shape_elems + shape_elems // 64, shape_elems // 2 + shape_elems // 16], 1)
    cost = np.stack([np.zeros(n), rng.random(n), rng.random(n) * 5], 1)
    problem = Problem(tuple(f"l{i}" for i in range(n)), ("fp", "int8", "nvfp4"), cost, nbytes.astype(np.int64),
                      fixed_bytes=123_456_789)
    for budget in (min_feasible_bytes(problem), min_feasible_bytes(problem) + 1, int(nbytes[:, 1].sum()) + 123_456_789):
        p = problem.with_budget(budget)
        a, b = get_solver("cbc").solve(p), get_solver("highs").solve(p)
        assert a.total_bytes <= budget and b.total_bytes <= budget
        assert a.objective == pytest.approx(b.objective, rel=1e-7, abs=1e-9)


def test_solvers_print_nothing_and_leave_stdout_working(capfd):
    problem = random_problem(4, max_layers=8)
    for name in available_solvers():
        try:
            get_solver(name).solve(problem)
        except InfeasibleError:
            pass
    print("still here")
    out, err = capfd.readouterr()
    assert out == "still here\n" and err == ""


@pytest.mark.parametrize("name", ["cbc", "highs"])
def test_time_limit(name):
    problem = random_problem(13, budget="tight")  # the budget binds: the backend runs
    assert get_solver(name, time_limit=60).solve(problem).status == "optimal"
    with pytest.raises(SolverError, match="time_limit of 1e-09 s ran out before an answer"):
        get_solver(name, time_limit=1e-9).solve(problem)


def test_the_command_lines_solver_names_are_the_registrys():
    """`mpsearch solve --solver` lists its choices without importing the solvers (a light --help): the list must
    stay the registry's engines, less optuna (which refines through --search optuna)."""
    from mpsearch.allocation.defaults import DEFAULT_SOLVER, SOLVER_NAMES
    from mpsearch.allocation.solvers import available_solvers

    assert SOLVER_NAMES == tuple(s for s in available_solvers() if s != "optuna")
    assert DEFAULT_SOLVER in SOLVER_NAMES

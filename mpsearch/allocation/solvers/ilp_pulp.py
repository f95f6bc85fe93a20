"""Exact solver "cbc": the 0/1 program of :mod:`mpsearch.allocation.solvers._ilp`, solved by CBC through PuLP.

CBC runs single-threaded (deterministic), silent, with relative and absolute gaps 0 so that "optimal" means
proven optimal. A ``cbc`` on the PATH (``pip install pulp[cbc]``) is used when there is one; otherwise the
CBC that PuLP bundles.
"""

from __future__ import annotations

import warnings

import numpy as np

from mpsearch.allocation.solvers._ilp import IlpBackend, LinearModel, RunResult
from mpsearch.allocation.solvers.base import SolverError
from mpsearch.allocation.solvers.registry import register_solver
from mpsearch.errors import OptionalDependencyError


def _import_pulp():
    try:
        import pulp
    except ImportError:  # pragma: no cover - pulp is a core dependency
        raise OptionalDependencyError("the 'cbc' solver needs PuLP: pip install pulp") from None
    return pulp


@register_solver
class PulpCbcSolver(IlpBackend):
    """Exact: CBC through PuLP. Options: ``time_limit`` (seconds, default None = none)."""

    name = "cbc"
    backend = "CBC"

    def _cbc(self, pulp, time_limit: float | None):
        # CBC prunes nodes that cannot beat the incumbent by its cutoff "increment", by default a guess
        # from the objective's scale; in practice that stopped ~1e-6 short of optimal. The objective's
        # typical coefficient is 1 (see _ilp), so 1e-9 is negligible yet still prunes exact ties.
        # No ``threads``: any value, even 1, switches CBC 2.10 into its threaded branch-and-bound, which
        # gains nothing on these small models and is the mode with known lock stalls (coin-or/Cbc#640,
        # coin-or/pulp#737); bench_all saw three ILP solves of ~0.02 s take exactly ~10 s with it on.
        options = dict(msg=False, gapRel=0.0, gapAbs=0.0, timeLimit=time_limit, options=["increment 1e-9"])
        with warnings.catch_warnings():
            # PuLP >= 3.3 announces that its bundled CBC goes away in 4.0; it is still the one we have.
            warnings.simplefilter("ignore", DeprecationWarning)
            on_path = pulp.COIN_CMD(**options)
            if on_path.available():
                return on_path
            bundled = pulp.PULP_CBC_CMD(**options)
        if not bundled.available():
            raise OptionalDependencyError(
                "the 'cbc' solver found no CBC: pip install 'pulp[cbc]', or use --solver highs"
            )
        return bundled

    def _run(self, model: LinearModel, time_limit: float | None) -> RunResult:
        pulp = _import_pulp()
        prob = pulp.LpProblem("mpsearch_allocation", pulp.LpMinimize)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # LpVariable(...) on PuLP >= 3.3
            add = getattr(prob, "add_variable", None)
            if add is not None:
                xs = [add(f"x{i}", 0, 1, cat=pulp.LpBinary) for i in range(model.n_vars)]
            else:  # pragma: no cover - PuLP < 3.3
                xs = [pulp.LpVariable(f"x{i}", 0, 1, cat=pulp.LpBinary) for i in range(model.n_vars)]
        prob.setObjective(pulp.LpAffineExpression(list(zip(xs, model.c.tolist(), strict=True))))
        for j in range(len(model.starts) - 1):
            block = xs[model.starts[j] : model.starts[j + 1]]
            prob.addConstraint(pulp.LpAffineExpression([(x, 1.0) for x in block]) == 1, f"one_{j}")
        for r, row in enumerate(model.a_ub):
            nz = np.flatnonzero(row)
            expr = pulp.LpAffineExpression([(xs[i], float(row[i])) for i in nz])
            prob.addConstraint(expr <= float(model.b_ub[r]), f"row_{r}")
        prob.solve(self._cbc(pulp, time_limit))

        status, sol_status = prob.status, prob.sol_status
        raw = (f"PuLP status {pulp.LpStatus.get(status, status)!r}, "
               f"solution {pulp.LpSolution.get(sol_status, sol_status)!r}")
        if status == pulp.LpStatusInfeasible or sol_status == pulp.LpSolutionInfeasible:
            return RunResult("infeasible", None, raw)
        if sol_status in (pulp.LpSolutionOptimal, pulp.LpSolutionIntegerFeasible):
            x = np.array([x.varValue if x.varValue is not None else 0.0 for x in xs])
            proven = status == pulp.LpStatusOptimal and sol_status == pulp.LpSolutionOptimal
            return RunResult("optimal" if proven else "feasible", x, raw)
        limit = f" within the time limit of {self.time_limit} s" if self.time_limit else ""
        raise SolverError(f"CBC found no plan{limit} ({raw}); raise time_limit or use --solver highs")

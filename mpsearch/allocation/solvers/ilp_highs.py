"""Exact solver "highs": the 0/1 program of :mod:`mpsearch.allocation.solvers._ilp`, solved by HiGHS through
``scipy.optimize.milp``. The same formulation as "cbc" with another backend, for cross-checking."""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

import numpy as np

from mpsearch.allocation.solvers._ilp import IlpBackend, LinearModel, RunResult
from mpsearch.allocation.solvers.base import SolverError
from mpsearch.allocation.solvers.registry import register_solver
from mpsearch.errors import OptionalDependencyError

# HiGHS options that scipy.optimize.milp does not list but passes through verbatim (with a warning):
# without mip_abs_gap=0, HiGHS stops 1e-6 short of proven optimality in absolute objective terms.
_VERBATIM = {"mip_abs_gap": 0.0}


@contextlib.contextmanager
def _native_stdout_silenced():
    """Send file descriptor 1 to /dev/null for the duration.

    The HiGHS inside some SciPy builds prints debug lines (``HighsMipSolverData::...``) with printf even with
    ``disp=False``; on stdout they would corrupt ``--json`` output. Python-level writes from other threads
    during the solve are lost too, so the window is kept to the ``milp`` call.
    """
    try:
        fd = sys.__stdout__.fileno() if sys.__stdout__ is not None else 1
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # no real stdout (embedded interpreter): nothing to guard
        yield
        return
    try:
        for stream in (sys.stdout, sys.__stdout__):
            if stream is not None:
                with contextlib.suppress(Exception):
                    stream.flush()
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


@register_solver
class HighsSolver(IlpBackend):
    """Exact: HiGHS via scipy.optimize.milp. Options: ``time_limit`` (seconds, default None = none)."""

    name = "highs"
    backend = "HiGHS"

    def _run(self, model: LinearModel, time_limit: float | None) -> RunResult:
        try:
            from scipy.optimize import Bounds, LinearConstraint, milp
            from scipy.sparse import csr_array
        except ImportError:  # pragma: no cover - scipy is a core dependency
            raise OptionalDependencyError("the 'highs' solver needs SciPy >= 1.9: pip install scipy") from None
        n = model.n_vars
        one_hot = csr_array((np.ones(n), np.arange(n), model.starts), shape=(len(model.starts) - 1, n))
        constraints = [LinearConstraint(one_hot, 1.0, 1.0)]
        if len(model.b_ub):
            constraints.append(LinearConstraint(csr_array(model.a_ub), -np.inf, model.b_ub))
        options: dict = {"disp": False, "presolve": True, "mip_rel_gap": 0.0, **_VERBATIM}
        if time_limit is not None:
            options["time_limit"] = float(time_limit)
        with warnings.catch_warnings(), _native_stdout_silenced():
            warnings.filterwarnings("ignore", message="Unrecognized options detected", category=RuntimeWarning)
            res = milp(model.c, integrality=np.ones(n), bounds=Bounds(0.0, 1.0), constraints=constraints,
                       options=options)
        raw = f"scipy.optimize.milp status {res.status}: {res.message}"
        if res.status == 0:
            return RunResult("optimal", res.x, raw)
        if res.status == 2:
            return RunResult("infeasible", None, raw)
        if res.status == 1 and res.x is not None:
            return RunResult("feasible", res.x, raw)
        limit = f" within the time limit of {self.time_limit} s" if self.time_limit else ""
        raise SolverError(f"HiGHS found no plan{limit} ({raw}); raise time_limit or use --solver cbc")

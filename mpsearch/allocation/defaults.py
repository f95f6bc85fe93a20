"""Allocation defaults the command line shows in its help, in a module that imports nothing, so that building
the parser (``mpsearch --help``) imports no torch."""

#: solve/schedule rounds of :func:`mpsearch.allocation.joint.solve_joint` (and `mpsearch solve --rounds`)
DEFAULT_ROUNDS = 2

#: the default solver engine of :func:`mpsearch.solve` (exact: CBC through PuLP)
DEFAULT_SOLVER = "cbc"
#: the solver engines `mpsearch solve --solver` offers: the registry's names less "optuna" (which refines the ILP's
#: plans through `--search optuna`); a test keeps the two lists the same
SOLVER_NAMES = ("bruteforce", "cbc", "greedy", "highs", "random")

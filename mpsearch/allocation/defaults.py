"""Allocation defaults the command line shows in its help, in a module that imports nothing, so that building
the parser (``mpsearch --help``) imports no torch."""

#: solve/schedule rounds of :func:`mpsearch.allocation.joint.solve_joint` (and `mpsearch solve --rounds`)
DEFAULT_ROUNDS = 2

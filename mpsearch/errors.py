"""One error hierarchy. Messages say what was expected, what came, and what to do."""


class MpsearchError(Exception):
    """Root of every error mpsearch raises on purpose. The CLI prints it as one line, exit code 1."""

    exit_code = 1


class UsageError(MpsearchError):
    """The user asked for something malformed (bad flag value, unparsable budget). CLI exit code 2."""

    exit_code = 2


class FormatError(MpsearchError):
    """A number format cannot take this input (unknown name, ineligible shape, NaN/inf values)."""


class ModelError(MpsearchError):
    """A model or pipeline folder is missing, unreadable, or not a supported diffusers denoiser."""


class PlanError(MpsearchError):
    """A plan file is malformed or does not match the model it is applied to."""


class ProfileError(MpsearchError):
    """A profile file is corrupt, foreign, or made for another model or configuration."""


class BudgetError(UsageError):
    """A budget does not parse or cannot be met."""


class InfeasibleError(MpsearchError):
    """No assignment satisfies the constraints; the message names the smallest feasible budget."""

    def __init__(self, message: str, min_bytes: int | None = None) -> None:
        super().__init__(message)
        self.min_bytes = min_bytes


class OptionalDependencyError(MpsearchError):
    """An optional package is needed for this feature; the message names it."""


class ResourceError(MpsearchError):
    """The machine lacks the memory a run needs; the message names settings that would fit."""

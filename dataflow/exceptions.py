"""Errors raised by `dataflow`. One root, `DataflowError`; shallow; stdlib only.

    DataflowError
    ├── SpecError (ValueError)          the pipeline spec is wrong: every issue, with file/line/key path
    ├── ModelError                      the model cannot be loaded, built or shipped to the workers
    │   └── UnpicklableModelError (TypeError)   names the captured object that does not pickle
    ├── PredictError                    predict failed on a batch (wraps the model's own error as __cause__)
    │   └── BatchTimeoutError (TimeoutError)    one batch ran past `predict.timeout`
    └── RunError                        the run stopped: a shard kept failing with `on_error: fail`

The CLI maps `SpecError` to exit code 2 and every other `DataflowError` to exit code 1, printing
`str(error)` as the message, so each message here is written to stand on its own.
"""

from __future__ import annotations

from dataclasses import dataclass


class DataflowError(Exception):
    """Root of every error `dataflow` raises."""


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a pipeline spec, located as precisely as we can.

    `origin` is the file (or `--set key=value`, or None for a spec built in Python); `line` and
    `column` are 1-based; `path` is the dotted key path (`predict.batch_size`, `source.columns[1]`).
    """

    message: str
    path: str = ""
    origin: str | None = None
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.origin or ""
        if where and self.line is not None:
            where = f"{where}:{self.line}"
        parts = [p for p in (where, self.path) if p]
        return ": ".join(parts + [self.message])


class SpecError(DataflowError, ValueError):
    """The pipeline spec is invalid. `.issues` lists every problem found (all at once), each
    printed on its own line as `file:line: key.path: message`."""

    def __init__(self, issues: list[SpecIssue] | SpecIssue | str):
        if isinstance(issues, str):
            issues = [SpecIssue(issues)]
        elif isinstance(issues, SpecIssue):
            issues = [issues]
        self.issues: list[SpecIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))

    # The first issue's position, for callers that want one (editors, tests).
    @property
    def file(self) -> str | None:
        return self.issues[0].origin if self.issues else None

    @property
    def line(self) -> int | None:
        return self.issues[0].line if self.issues else None

    @property
    def column(self) -> int | None:
        return self.issues[0].column if self.issues else None

    @property
    def field(self) -> str:
        return self.issues[0].path if self.issues else ""

    def __reduce__(self):
        return (type(self), (self.issues,))


class ModelError(DataflowError):
    """The model could not be loaded, built, or prepared for the workers."""


class UnpicklableModelError(ModelError, TypeError):
    """The model (or the predict function) holds an object that cannot be pickled, so it cannot be
    put in the object store. `.culprit` is the access path of that object (`model.db`)."""

    def __init__(self, message: str, culprit: str = ""):
        self.culprit = culprit
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.culprit))


class PredictError(DataflowError):
    """Predict failed on a batch of a shard. The model's own exception is `__cause__`; the message
    gives the shard, its file and the rows of the batch."""

    def __init__(self, message: str, shard_index: int | None = None):
        self.shard_index = shard_index
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.shard_index))


class BatchTimeoutError(PredictError, TimeoutError):
    """One batch ran longer than `predict.timeout`."""


class RunError(DataflowError):
    """The run stopped because a shard kept failing (`runtime.on_error: fail`). `.summary` is the
    run's summary up to that point (status "failed")."""

    def __init__(self, message: str, summary=None):
        self.summary = summary
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.summary))


__all__ = [
    "DataflowError",
    "SpecIssue",
    "SpecError",
    "ModelError",
    "UnpicklableModelError",
    "PredictError",
    "BatchTimeoutError",
    "RunError",
]

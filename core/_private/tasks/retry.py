"""What happens to work when something fails: one rule for every retry, and the rebuild rule.

    task raised (TaskError) ──────┐
    its worker died ──────────────┼──► retry_decision(subject, cause) ──► "retry" | "requeue"
    an actor's process died ──────┘                                       | "cancel" | "fail"
    an object was lost ──────────────► rebuild_decision(obj, task)   ──► "rebuild" | "building"
                                                                          | "no_lineage" | "too_many"

`subject` is a task or an actor: both carry `retries_left` (restarts, for an actor; -1 means
forever). The decisions read; they change nothing. The caller spends the retry
(`spend_retry`) and carries the verdict out.
"""

from __future__ import annotations

from typing import Any, Literal

Cause = Literal["app_error", "worker_died", "actor_died"]
Verdict = Literal["retry", "requeue", "cancel", "fail"]
Rebuild = Literal["rebuild", "building", "no_lineage", "too_many"]

MAX_RECONSTRUCTIONS = 3   # times one object is rebuilt from lineage before giving up


def retry_decision(subject: Any, cause: Cause, error: BaseException | None = None) -> Verdict:
    """The one retry rule.

    - A task queued behind another on a worker that died never started: "requeue" (run it again
      without spending a retry).
    - A task being cancelled is not run again: "cancel".
    - An application error (`cause="app_error"`, `error` the TaskError) is retried only when
      the task opted in with `retry_exceptions` (True, or a list of exception types that the
      error's cause is one of) and has retries left.
    - A worker's death is retried while retries are left (`max_retries`); an actor's process
      dying restarts the actor while restarts are left (`max_restarts`); a dead (killed) actor
      is never restarted.
    """
    state = subject.state
    if state == "pipelined" and cause == "worker_died":
        return "requeue"
    if state == "cancelling" or state == "dead":
        return "cancel"
    if subject.retries_left == 0:
        return "fail"
    if cause == "app_error":
        allowed = subject.retry_exceptions
        if not allowed:
            return "fail"
        if isinstance(allowed, (list, tuple)) and not isinstance(getattr(error, "cause", None), tuple(allowed)):
            return "fail"
    return "retry"


def spend_retry(subject: Any) -> None:
    """One retry (or restart) used; -1 stays unlimited."""
    if subject.retries_left > 0:
        subject.retries_left -= 1


def rebuild_decision(obj: Any) -> Rebuild:
    """May a lost object be made again by re-running the task that made it (its lineage)?"""
    task = obj.task
    if task is None:
        return "no_lineage"           # made by core.put: nothing to re-run
    if obj.rebuilds >= MAX_RECONSTRUCTIONS:
        return "too_many"
    if task.state != "done":
        return "building"             # already being re-run
    return "rebuild"

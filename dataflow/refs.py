"""`package.module:attr` references: resolving them, and how many arguments a callable takes.

Light on purpose (no pydantic, no pyarrow): the spec uses these to validate, and the workers to
build the predictor, without importing the spec machinery.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any, Callable


def resolve_ref(ref: str) -> Any:
    """Import `package.module:attr.sub` and return the attribute. Raises ValueError with a message
    fit for the user (which part is missing, with a did-you-mean)."""
    module_name, _, attr_path = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ValueError(f"cannot import module {module_name!r} ({exc}); is it on the Python path?") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            hint = did_you_mean(part, names)
            raise ValueError(f"{module_name!r} has no attribute {part!r}{hint}")
        obj = getattr(obj, part)
    return obj


def did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?".replace("'", '"') if close else ""


def callable_arity(fn: Callable) -> int:
    """Number of positional parameters `fn` takes (for `fn(batch)` vs `fn(model, batch)`)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return 2
    if any(p.kind == p.VAR_POSITIONAL for p in params):
        return 2
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               and p.default is p.empty)

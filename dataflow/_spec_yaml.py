"""The YAML side of the spec: a pipeline file (and `--set` overrides) as plain data, with the
position every key path came from, so that each problem found later names its file, line and
column.

    pipeline.yaml ──yaml.compose──► node tree ──_Builder──► plain data + Positions
                                                  │  ${ENV} / ${ENV:-default} interpolated here
    --set a.b=c  ──yaml-typed value──────────────►│  (apply_overrides: an override remembers
                                                  ▼   its own origin, `--set a.b=c`)
                                     dataflow.spec.validate(data, positions)

Problems found here (bad syntax, duplicate keys, unset variables, a malformed override) are
collected as `SpecIssue`s, not raised: `dataflow.spec.load` reports them with the field errors.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import yaml

from ._spec_fields import show
from .exceptions import SpecIssue


@dataclass(frozen=True)
class Mark:
    origin: str
    line: int | None = None
    column: int | None = None


Path = tuple  # of str | int


class Positions:
    """Where each key path came from: a line in the file, or a `--set` override."""

    def __init__(self, origin: str | None = None):
        self.origin = origin
        self.marks: dict[Path, Mark] = {}
        self.overrides: dict[Path, Mark] = {}

    def locate(self, path: Path) -> Mark | None:
        for n in range(len(path), -1, -1):
            prefix = tuple(path[:n])
            if prefix in self.overrides:
                return self.overrides[prefix]
            if prefix in self.marks:
                return self.marks[prefix]
        return Mark(self.origin) if self.origin else None


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class _Builder:
    """Node tree -> plain Python data, recording each key path's position and interpolating
    environment variables in scalars. Problems are collected, not raised."""

    def __init__(self, origin: str, env: dict[str, str]):
        self.origin = origin
        self.env = env
        self.positions = Positions(origin)
        self.issues: list[SpecIssue] = []

    def mark(self, node: yaml.Node) -> Mark:
        return Mark(self.origin, node.start_mark.line + 1, node.start_mark.column + 1)

    def issue(self, path: Path, node: yaml.Node, message: str) -> None:
        m = self.mark(node)
        self.issues.append(SpecIssue(message, dotted(path), m.origin, m.line, m.column))

    def build(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            out = []
            for i, item in enumerate(node.value):
                self.positions.marks[path + (i,)] = self.mark(item)
                out.append(self.build(item, path + (i,)))
            return out
        return self._scalar(node, path)

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict:
        out: dict = {}
        merged: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for src in sources:
                    value = self.build(src, path)
                    if isinstance(value, dict):
                        for k, v in value.items():
                            merged.setdefault(k, v)
                continue
            key = self._scalar(key_node, path)
            if not isinstance(key, (str, int)):
                self.issue(path, key_node, f"keys must be names, got {show(key)}")
                continue
            key = str(key)
            if key in out:
                self.issue(path + (key,), key_node, "duplicate key (the earlier value would be ignored)")
            self.positions.marks[path + (key,)] = self.mark(key_node)
            out[key] = self.build(value_node, path + (key,))
        for k, v in merged.items():
            out.setdefault(k, v)
        return out

    def _scalar(self, node: yaml.Node, path: Path) -> Any:
        if "${" in node.value and node.tag == "tag:yaml.org,2002:str":
            text, ok = self._interpolate(node, path)
            if not ok:
                return node.value
            if node.style is None:  # plain scalar: `batch_size: ${BS:-1024}` becomes an int
                try:
                    typed = yaml.safe_load(text)
                except yaml.YAMLError:
                    return text
                return typed if isinstance(typed, (int, float, bool, str)) or typed is None else text
            return text
        return yaml.constructor.SafeConstructor().construct_object(node, deep=True)

    def _interpolate(self, node: yaml.Node, path: Path) -> tuple[str, bool]:
        missing: list[str] = []

        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in self.env:
                return self.env[name]
            if default is not None:
                return default
            missing.append(name)
            return m.group(0)

        text = _ENV.sub(sub, node.value)
        for name in missing:
            self.issue(path, node, f"environment variable {name} is not set; set it or give a "
                                   f"default as ${{{name}:-value}}")
        return text, not missing


def load_yaml(text: str, origin: str, env: dict[str, str] | None = None) -> tuple[Any, Positions, list[SpecIssue]]:
    """Parse YAML text into (data, positions, issues). Syntax errors become one issue each."""
    builder = _Builder(origin, dict(os.environ) if env is None else env)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        why = " ".join(p for p in (exc.context, exc.problem) if p)
        issue = SpecIssue(f"invalid YAML: {why}", "", origin,
                          mark.line + 1 if mark else None, mark.column + 1 if mark else None)
        return None, builder.positions, [issue]
    except yaml.YAMLError as exc:
        return None, builder.positions, [SpecIssue(f"invalid YAML: {exc}", "", origin)]
    if root is None:
        return None, builder.positions, [SpecIssue("the file is empty; a pipeline needs at least "
                                                   "source and model", "", origin, 1)]
    data = builder.build(root, ())
    return data, builder.positions, builder.issues


def apply_overrides(data: dict, overrides: list[str], positions: Positions) -> list[SpecIssue]:
    """Apply `a.b=c` overrides in place; `c` is read as YAML (`5` is an int, `[a, b]` a list)."""
    issues = []
    for item in overrides or []:
        key, eq, raw = item.partition("=")
        key = key.strip()
        origin = f"--set {item}"
        if not eq or not key or any(not p for p in key.split(".")):
            issues.append(SpecIssue("expected key.path=value, e.g. predict.batch_size=1024", "", "--set " + item))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            issues.append(SpecIssue(f"the value is not valid YAML ({exc.__class__.__name__})", key, origin))
            continue
        parts: list = key.split(".")
        node: Any = data
        path: Path = ()
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                part = int(part)
            elif not isinstance(node, dict):
                issues.append(SpecIssue(f"cannot set a key inside {show(node)}", dotted(path), origin))
                break
            path += (part,)
            if last:
                node[part] = value
                positions.overrides[path] = Mark(origin)
            else:
                if isinstance(node, dict) and not isinstance(node.get(part), (dict, list)):
                    node[part] = {}
                node = node[part]
    return issues


def dotted(path: Path) -> str:
    """A key path as the user writes it: `stages[0].fn`, `predict.batch_size`."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out

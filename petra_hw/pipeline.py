"""Pipelines: ordered compression steps plus model-level settings.

A pipeline is an immutable value: hashable, with a stable content hash, a JSON round trip and a
text round trip in the paper's notation (``LR(rule=energy, threshold=0.95) - Pr(ratio=0.3) - PTQ``).
Every step carries all of its parameters (defaults filled in), so two spellings of the same
pipeline compare equal and hash the same.  The empty pipeline is the uncompressed baseline and
prints as ``Original``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from petra_hw.errors import UserError
from petra_hw.kinds import KINDS, SETTINGS, ParamValue, kind_spec

ORIGINAL = "Original"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def _fmt_value(v: ParamValue) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


@dataclass(frozen=True)
class Step:
    """One compression operation: a canonical kind name and all of its parameters."""

    kind: str
    params: tuple[tuple[str, ParamValue], ...] = ()

    @staticmethod
    def make(kind: str, **params: object) -> Step:
        """Build a validated step; unspecified parameters take their defaults."""
        spec = kind_spec(kind)
        values = spec.defaults()
        for name, value in params.items():
            values[name] = spec.param(name).coerce(value, spec.name)
        return Step(spec.name, tuple((p.name, values[p.name]) for p in spec.params))

    def __post_init__(self) -> None:
        spec = kind_spec(self.kind)
        if self.kind != spec.name or [n for n, _ in self.params] != [p.name for p in spec.params]:
            # Direct construction with aliases or partial parameters would break hashing.
            raise UserError(f"use Step.make({self.kind!r}, ...) to build a step")

    def __getitem__(self, name: str) -> ParamValue:
        for n, v in self.params:
            if n == name:
                return v
        raise KeyError(name)

    @property
    def spec(self):  # -> KindSpec
        return KINDS[self.kind]

    def replace(self, **params: object) -> Step:
        return Step.make(self.kind, **{**dict(self.params), **params})

    def to_text(self, full: bool = False) -> str:
        defaults = self.spec.defaults()
        shown = [(n, v) for n, v in self.params if full or v != defaults[n]]
        if not shown:
            return self.kind
        return f"{self.kind}(" + ", ".join(f"{n}={_fmt_value(v)}" for n, v in shown) + ")"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "params": dict(self.params)}

    def __str__(self) -> str:
        return self.to_text()


@dataclass(frozen=True)
class Pipeline:
    """Ordered steps plus model-level settings (optimizer, lr, loss)."""

    steps: tuple[Step, ...] = ()
    settings: tuple[tuple[str, ParamValue], ...] = tuple(
        (p.name, p.default) for p in SETTINGS.params
    )

    @staticmethod
    def make(steps: list[Step] | tuple[Step, ...] = (), **settings: object) -> Pipeline:
        values = {p.name: p.default for p in SETTINGS.params}
        for name, value in settings.items():
            values[name] = SETTINGS.param(name).coerce(value, "settings")
        return Pipeline(tuple(steps), tuple((p.name, values[p.name]) for p in SETTINGS.params))

    def setting(self, name: str) -> ParamValue:
        return dict(self.settings)[SETTINGS.param(name).name]

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def prefix(self, k: int) -> Pipeline:
        """The first ``k`` steps with the same settings: it identifies an intermediate model."""
        return Pipeline(self.steps[:k], self.settings)

    def replace_steps(self, steps: list[Step] | tuple[Step, ...]) -> Pipeline:
        return Pipeline(tuple(steps), self.settings)

    def replace_settings(self, **settings: object) -> Pipeline:
        return Pipeline.make(self.steps, **{**dict(self.settings), **settings})

    # -- identity -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"steps": [s.to_json() for s in self.steps], "settings": dict(self.settings)}

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> Pipeline:
        try:
            steps = [Step.make(s["kind"], **s.get("params", {})) for s in data.get("steps", [])]
            return Pipeline.make(steps, **data.get("settings", {}))
        except (TypeError, KeyError, AttributeError) as exc:
            raise UserError(f"malformed pipeline JSON: {exc}") from None

    @property
    def hash(self) -> str:
        """Stable content hash (16 hex digits) of the canonical JSON form."""
        blob = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # -- text -------------------------------------------------------------------------------
    def to_text(self, full: bool = False) -> str:
        body = " - ".join(s.to_text(full) for s in self.steps) or ORIGINAL
        defaults = {p.name: p.default for p in SETTINGS.params}
        shown = [(n, v) for n, v in self.settings if full or v != defaults[n]]
        if shown:
            body += " ; " + ", ".join(f"{n}={_fmt_value(v)}" for n, v in shown)
        return body

    def __str__(self) -> str:
        return self.to_text()

    @staticmethod
    def parse(text: str) -> Pipeline:
        return parse_pipeline(text)


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside parentheses; reject unbalanced parentheses."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise UserError(f"unbalanced ')' in pipeline {text!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise UserError(f"unbalanced '(' in pipeline {text!r}")
    parts.append("".join(cur))
    return parts


def _parse_args(body: str, where: str) -> list[tuple[str | None, str]]:
    args: list[tuple[str | None, str]] = []
    if not body.strip():
        return args
    for raw in body.split(","):
        item = raw.strip()
        if not item:
            raise UserError(f"empty argument in {where!r}")
        if "=" in item:
            name, value = (x.strip() for x in item.split("=", 1))
            if not _NAME.match(name) or not value:
                raise UserError(f"bad argument {item!r} in {where!r}")
            args.append((name, value))
        else:
            args.append((None, item))
    return args


def _parse_step(token: str) -> Step:
    tok = token.strip()
    if not tok:
        raise UserError("empty step in pipeline (two '-' in a row, or a trailing '-')")
    m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)\s*(?:\((.*)\))?", tok, flags=re.S)
    if not m:
        raise UserError(f"cannot parse step {tok!r}: expected KIND or KIND(name=value, ...)")
    spec = kind_spec(m.group(1))
    params: dict[str, object] = {}
    for i, (name, value) in enumerate(_parse_args(m.group(2) or "", tok)):
        if name is None:
            if i != 0 or not spec.params:
                raise UserError(f"positional value {value!r} in {tok!r}: only the first may be")
            name = spec.params[0].name
        if name in params:
            raise UserError(f"parameter '{name}' given twice in {tok!r}")
        spec.param(name)
        params[name] = value
    return Step.make(spec.name, **params)


def parse_pipeline(text: str) -> Pipeline:
    """Parse the paper's notation: ``STEP - STEP ... [; setting=value, ...]``."""
    if not isinstance(text, str) or not text.strip():
        raise UserError("empty pipeline text (use 'Original' for the uncompressed model)")
    head, _, tail = text.partition(";")
    settings: dict[str, object] = {}
    for name, value in _parse_args(tail, text) if tail.strip() else []:
        if name is None:
            raise UserError(f"pipeline setting {value!r} needs a name, e.g. lr=0.001")
        SETTINGS.param(name)
        settings[name] = value
    if ";" in tail:
        raise UserError(f"more than one ';' in pipeline {text!r}")
    head = head.strip()
    if head == ORIGINAL:
        return Pipeline.make((), **settings)
    steps = [_parse_step(t) for t in _split_top(head, "-")]
    return Pipeline.make(steps, **settings)

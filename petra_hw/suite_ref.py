"""How a suite made in Python reaches worker processes: by a reference, never pickled.

A suite holds a model, data and functions that pickle badly or not at all (lambdas, classes of a
notebook, open datasets), and a pickled model would have to travel to every worker.  Instead a
worker makes the suite again from where it was made: a *reference* ``package.module:NAME`` or
``/abs/file.py:NAME``, where NAME is a module-level ``Suite`` or a module-level function without
arguments that returns one.  ``Suite.from_torch`` notes where it is called (``Origin``);
``reference`` turns that into the reference string, or says why the suite cannot travel (made in a
notebook or an interactive session, or inside a function that takes arguments or is not at module
level).  A suite that cannot travel still runs in this process (``workers=1``).

Within the process that made a suite, ``remember`` keeps it under its reference so that loading
that reference here returns the same object and never runs the user's code again.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from petra_hw.errors import UserError
from petra_hw.user_module import load_user_file

if TYPE_CHECKING:
    from petra_hw.suite import Suite

IN_MEMORY = "<in-memory:"  # the reference of a suite that cannot travel: this process only
_LOCAL: dict[str, Suite] = {}  # suites this process made, by reference


@dataclass(frozen=True)
class Origin:
    """Where ``Suite.from_torch`` was called: the module, and the module-level function that
    called it (None: the module's own top-level code)."""

    module: str
    file: str | None
    function: str | None
    problem: str | None = None  # why a suite made here cannot travel, or None


def capture_origin() -> Origin:
    """The caller of petra-hw's code (the first frame outside the ``petra_hw`` package)."""
    frame = sys._getframe(1)
    while frame is not None and str(frame.f_globals.get("__name__", "")).startswith("petra_hw"):
        frame = frame.f_back
    if frame is None:  # pragma: no cover - petra_hw calling itself
        return Origin("", None, None, "made inside petra-hw itself")
    module = str(frame.f_globals.get("__name__", ""))
    file = frame.f_globals.get("__file__")
    name = frame.f_code.co_name
    if not file:
        return Origin(module, None, None, "it was made in a notebook or an interactive session")
    if name == "<module>":
        return Origin(module, str(Path(file).resolve()), None)
    fn = frame.f_globals.get(name)
    if getattr(fn, "__code__", None) is not frame.f_code:
        where = getattr(frame.f_code, "co_qualname", name)
        return Origin(
            module, file, None, f"it was made in `{where}`, which is not a module-level function"
        )
    try:
        inspect.signature(fn).bind()
    except TypeError:
        return Origin(module, file, None, f"it was made in `{name}(...)`, which takes arguments")
    return Origin(module, str(Path(file).resolve()), name)


def _module_part(origin: Origin) -> str:
    """A package module by its dotted name (its relative imports need the package); a script or
    a top-level module by its file."""
    if origin.module != "__main__" and "." in origin.module:
        return origin.module
    return str(origin.file)


def reference(suite: Suite) -> tuple[str, str | None]:
    """(reference, None) for a suite a worker can make again, else (an in-memory reference that
    only this process resolves, why it cannot travel).  Either way it is remembered here."""
    origin = suite.origin
    problem = (
        None
        if origin is not None
        else "it was built in Python without Suite.from_torch (give its reference file.py:NAME)"
    )
    ref = None
    if origin is not None and origin.problem is None:
        module = sys.modules.get(origin.module)
        # a module-level variable holding this very suite, else the factory that made it; either
        # one defined where a worker importing the module sees it (not under a __main__ guard)
        seen = _importable_names(Path(str(origin.file)))
        held = [k for k, v in vars(module).items() if v is suite] if module else []
        names = [n for n in [*held, origin.function] if n and n in seen]
        if names:
            ref = f"{_module_part(origin)}:{names[0]}"
        elif held or origin.function:
            problem = (
                f"`{(held or [origin.function])[0]}` is set under `if __name__ == '__main__':` "
                f"in {origin.file}, which a worker importing the file does not run; make the suite "
                "in a module-level function without arguments"
            )
        else:
            problem = (
                f"it is not a module-level variable of {origin.file} (nor made by a module-level "
                "function without arguments)"
            )
    elif origin is not None:
        problem = origin.problem
    if ref is None:
        ref = f"{IN_MEMORY}{suite.name}:{id(suite):x}>"
    remember(ref, suite)
    return ref, problem


def _importable_names(file: Path) -> set[str]:
    """Names a module's top-level code binds outside ``if __name__ == "__main__":`` blocks (what a
    worker that imports the file gets), read from its source without running it."""
    try:
        tree = ast.parse(file.read_text())
    except (OSError, SyntaxError, ValueError):
        return set()
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and any(
            isinstance(n, ast.Name) and n.id == "__name__" for n in ast.walk(node.test)
        ):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)  # its body binds nothing at module level
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    for statement in tree.body:
        visit(statement)
    return names


def remember(ref: str, suite: Suite) -> None:
    _LOCAL[ref] = suite


def is_reference(text: str) -> bool:
    """``module:NAME``, ``file.py:NAME`` or an in-memory reference (not a bundled name or a path)."""
    if text.startswith(IN_MEMORY):
        return True
    left, sep, name = text.rpartition(":")
    if not sep or not left or not name.isidentifier():
        return False
    return left.endswith(".py") or all(part.isidentifier() for part in left.split("."))


def _import(left: str, text: str):
    if left.endswith(".py"):
        path = Path(left)
        if not path.is_file():
            raise UserError(f"suite reference {text}: no file {path}")
        return load_user_file(path)
    try:
        return importlib.import_module(left)
    except ImportError as exc:
        raise UserError(
            f"suite reference {text}: cannot import {left} in this process ({exc}); "
            "put its folder on PYTHONPATH or install it where the workers run"
        ) from None


def load_reference(text: str) -> Suite:
    """The suite a reference names: this process's own, else made again from its module."""
    from petra_hw.failures import register_suite
    from petra_hw.suite import Suite

    if text in _LOCAL:
        return _LOCAL[text]
    if text.startswith(IN_MEMORY):
        raise UserError(
            f"suite {text} was made in Python in another process and cannot be made again here "
            "(a notebook or an interactive session): run it from that process, or define the suite "
            "in a .py module (a module-level SUITE or a function that returns it)"
        )
    left, _, name = text.rpartition(":")
    module = _import(left, text)
    obj = getattr(module, name, None)
    if obj is None:
        raise UserError(f"suite reference {text}: {left} defines no {name}")
    if callable(obj) and not isinstance(obj, Suite):
        try:
            obj = obj()
        except Exception as exc:
            raise UserError(
                f"suite factory {text} raised {type(exc).__name__}: {exc}".strip()
            ) from None
    if not isinstance(obj, Suite):
        raise UserError(f"suite reference {text} names a {type(obj).__name__}, not a Suite")
    source = getattr(module, "__file__", None)
    if source:
        register_suite(Path(source), user=True)
    suite = dataclasses.replace(obj, source=source or obj.source)
    remember(text, suite)
    return suite

"""Step kinds and their typed hyperparameters.

The schema lives apart from the implementations (``petra_hw.steps``) so that pipelines can be
parsed, validated and searched without importing torch-heavy step code.  Each kind declares its
parameters once; the parser, the printer, the search space and the step implementations all read
this table, so a new hyperparameter is added in one place.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from petra_hw.errors import UserError

ParamValue = int | float | str | bool


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: its type, default and legal values.

    ``low``/``high`` bound numbers (inclusive) and ``log`` says the search should move on a log
    scale; ``choices`` enumerates strings.
    """

    name: str
    type: type
    default: ParamValue
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    log: bool = False
    doc: str = ""

    def coerce(self, value: object, kind: str) -> ParamValue:
        """Convert text or JSON values to this parameter's type, or raise a UserError naming it."""
        where = f"{kind}({self.name}={value!r})"
        try:
            if self.type is bool:
                if isinstance(value, bool):
                    out: ParamValue = value
                elif str(value).lower() in {"true", "1", "yes", "on"}:
                    out = True
                elif str(value).lower() in {"false", "0", "no", "off"}:
                    out = False
                else:
                    raise ValueError
            elif self.type is int:
                if isinstance(value, bool):
                    raise ValueError
                f = float(value)  # accepts "3" and 3.0 but not 3.5
                if f != int(f):
                    raise ValueError
                out = int(f)
            elif self.type is float:
                if isinstance(value, bool):
                    raise ValueError
                out = float(value)
                if not math.isfinite(out):  # NaN passes every range check
                    raise ValueError
            else:
                out = str(value)
        except (TypeError, ValueError, OverflowError):
            raise UserError(
                f"bad value in {where}: expected a finite {self.type.__name__}"
            ) from None
        if self.choices and out not in self.choices:
            raise UserError(f"bad value in {where}: choose one of {', '.join(self.choices)}")
        if self.low is not None and isinstance(out, (int, float)) and out < self.low:
            raise UserError(f"bad value in {where}: must be >= {self.low}")
        if self.high is not None and isinstance(out, (int, float)) and out > self.high:
            raise UserError(f"bad value in {where}: must be <= {self.high}")
        return out


@dataclass(frozen=True)
class KindSpec:
    """A step kind: its canonical name, aliases, parameters, and whether it trains or quantizes."""

    name: str
    params: tuple[ParamSpec, ...]
    aliases: tuple[str, ...] = ()
    trains: bool = False
    quantizes: bool = False
    doc: str = ""

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params) or "none"
        raise UserError(f"unknown parameter '{name}' for step {self.name} (known: {known})")

    def defaults(self) -> dict[str, ParamValue]:
        return {p.name: p.default for p in self.params}


def _epochs(default: int = 1) -> ParamSpec:
    return ParamSpec("epochs", int, default, low=1, high=200, doc="passes over the train split")


KINDS: dict[str, KindSpec] = {
    k.name: k
    for k in (
        KindSpec(
            "Tr",
            (_epochs(2),),
            trains=True,
            doc="fine-tune with the model-level optimizer, learning rate and loss",
        ),
        KindSpec(
            "Reg",
            (
                ParamSpec(
                    "reg",
                    str,
                    "orth_hoyer",
                    choices=("orth_hoyer", "lai", "sparsity", "norm"),
                    doc="regularizer toward low rank or sparsity",
                ),
                ParamSpec("lambda_o", float, 1e-2, low=0.0, high=10.0, log=True),
                ParamSpec("lambda_h", float, 1e-3, low=0.0, high=10.0, log=True),
                ParamSpec("strength", float, 1e-4, low=0.0, high=10.0, log=True),
                _epochs(2),
            ),
            trains=True,
            doc="regularized training toward low rank (orthogonality + Hoyer) or sparsity",
        ),
        KindSpec(
            "LR",
            (
                ParamSpec(
                    "rule",
                    str,
                    "energy",
                    choices=("energy", "explained_variance", "sv_proportion", "ratio"),
                ),
                ParamSpec("threshold", float, 0.95, low=0.01, high=1.0),
            ),
            doc="truncated-SVD low-rank decomposition of Linear, Conv and Embedding layers",
        ),
        KindSpec(
            "Pr",
            (
                ParamSpec(
                    "criterion",
                    str,
                    "l1",
                    choices=("l1", "l2", "taylor", "hessian", "bn_scale", "lamp"),
                ),
                ParamSpec("ratio", float, 0.3, low=0.0, high=0.9),
                ParamSpec("scope", str, "uniform", choices=("uniform", "global")),
                ParamSpec("structured", bool, True, doc="False: unstructured magnitude masks"),
            ),
            doc="structured channel pruning through torch-pruning's dependency graph",
        ),
        KindSpec(
            "QAT",
            (ParamSpec("dtype", str, "int8", choices=("int8",)), _epochs(1)),
            aliases=(),
            trains=True,
            quantizes=True,
            doc="quantization-aware training (fake quantization), exported as QDQ",
        ),
        KindSpec(
            "PTQ",
            (
                ParamSpec("dtype", str, "int8", choices=("int8",)),
                ParamSpec(
                    "calibration",
                    str,
                    "minmax",
                    choices=("minmax", "entropy", "percentile"),
                ),
            ),
            aliases=("QS",),
            quantizes=True,
            doc="post-training static quantization, resolved by the backend compiler",
        ),
        KindSpec(
            "PDQ",
            (ParamSpec("dtype", str, "int8", choices=("int8",)),),
            aliases=("QD",),
            quantizes=True,
            doc="post-training dynamic quantization, resolved by the backend compiler",
        ),
        KindSpec("FP16", (), quantizes=True, doc="half precision, resolved by the backend"),
    )
}

_ALIASES: dict[str, str] = {a: k.name for k in KINDS.values() for a in (k.name, *k.aliases)}


def kind_spec(name: str) -> KindSpec:
    """Look a kind up by canonical name or alias (case-sensitive, as the paper writes them)."""
    try:
        return KINDS[_ALIASES[name]]
    except KeyError:
        known = ", ".join(sorted(_ALIASES))
        raise UserError(f"unknown step kind '{name}' (known: {known})") from None


@dataclass(frozen=True)
class SettingSpec:
    """Model-level settings shared by every training step of a pipeline."""

    params: tuple[ParamSpec, ...]

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.params)
        raise UserError(f"unknown pipeline setting '{name}' (known: {known})")


SETTINGS = SettingSpec(
    (
        ParamSpec("optimizer", str, "adam", choices=("sgd", "adam", "adamw")),
        ParamSpec("lr", float, 1e-3, low=1e-6, high=1.0, log=True),
        ParamSpec(
            "loss",
            str,
            "default",
            choices=("default", "label_smoothing", "mse", "huber"),
            doc="'default' is the suite's own loss",
        ),
    )
)

"""The objective registry: Param, Objective rows (OBJECTIVES), the official aliases, and parsing names
into an ObjectiveSpec (`parse_objective`, `required_topk`)."""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from deft_jax.objectives.gates import Coefficients, cayley_alpha
from deft_jax.objectives.statistics import is_traced

_REQUIRED = object()


def _finite(value) -> bool:
    return math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class Param:
    """One objective parameter: static Python number, validated by `check` (returns an error or None)."""

    name: str
    default: Any
    kind: type  # float or int
    check: Callable[[Any], str | None]
    doc: str

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


def _range_check(*, low=None, high=None, low_open=False, why=""):
    def check(value):
        if not _finite(value):
            return f"must be finite, got {value!r}"
        if low is not None and (value < low or (low_open and value == low)):
            bound = f"> {low}" if low_open else f">= {low}"
            return f"must be {bound}{why}, got {value!r}"
        if high is not None and value > high:
            return f"must be <= {high}{why}, got {value!r}"
        return None

    return check


_ALPHA = Param(
    "alpha", _REQUIRED, float,
    _range_check(low=0.0, why=" (alpha < 0, i.e. Tsallis q > 1, makes the gate p**alpha diverge as p -> 0)"),
    "focus index α = 1 − q: 0 → NLL, 1 → 1 − p",
)
_Q = Param(
    "q", _REQUIRED, float,
    _range_check(high=1.0, why=" (q > 1, i.e. alpha < 0, makes the gate p**alpha diverge as p -> 0)"),
    "Tsallis entropic index q = 1 − α",
)
_TAU = Param("tau", _REQUIRED, float, _range_check(low=0.0, high=1.0, why=" (a probability threshold)"),
             "probability threshold τ ∈ [0, 1]")
_K = Param("k", 20, int, _range_check(low=1, why=" (number of top logits)"), "top-k size (min(k, V) used)")
_POWER = Param("power", 1.0, float, _range_check(low=0.0, why=" (H̃**power with H̃ = 0 needs power >= 0)"),
               "exponent β on H̃")


def _epsilon_param(default):
    return Param("epsilon", default, float, _range_check(low=0.0),
                 f"added to α in the denominator (official {default:g}; 0 = exact family)")


_FLOOR_SCALE = Param("floor_scale", 0.5, float, _range_check(low=0.0, high=1.0), "f = floor_scale · mean p")
_ALPHA_MIN = Param("alpha_min", 1e-3, float, _range_check(low=0.0, high=1.0), "lower clamp of α*")
_ALPHA_MAX = Param("alpha_max", 1.0, float, _range_check(low=0.0, low_open=True), "upper clamp of α*")


def _const(value, like):
    return jnp.full(like.shape, value, like.dtype)


def _coef_nll(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, alpha=_const(0.0, p))


def _coef_prob(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, alpha=_const(1.0, p))


def _coef_deformed_log(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, alpha=_const(params["alpha"], p))


def _coef_tsallis(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, alpha=_const(1.0 - params["q"], p))


def _threshold_coef(*, keep_top: bool, alpha: float):
    def coef(*, stats, p, valid, mask, params):
        tau = params["tau"]
        keep = (p >= tau) if keep_top else (p <= tau)
        return Coefficients(kept=mask * keep.astype(mask.dtype), alpha=_const(alpha, p))

    return coef


def _coef_dft(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, scale=p)


def _coef_eaft(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, scale=jnp.power(stats.topk_entropy, params["power"]))


def _masked_mean(values, valid):
    count = jnp.sum(valid.astype(values.dtype))
    total = jnp.sum(jnp.where(valid, values, 0.0))
    return jnp.where(count > 0, total / jnp.where(count > 0, count, 1.0), 0.0)


def _coef_cayley(*, stats, p, valid, mask, params):
    alpha = cayley_alpha(
        p=p, batch_mean_p=_masked_mean(p, valid), epsilon=params["epsilon"],
        floor_scale=params["floor_scale"], alpha_min=params["alpha_min"], alpha_max=params["alpha_max"],
    )
    return Coefficients(kept=mask, alpha=alpha)


def _coef_deft(*, stats, p, valid, mask, params):
    return Coefficients(kept=mask, alpha=stats.collision)


def _check_cayley(params):
    if params["alpha_min"] > params["alpha_max"]:
        return f"alpha_min ({params['alpha_min']}) must be <= alpha_max ({params['alpha_max']})"
    return None


@dataclasses.dataclass(frozen=True)
class Objective:
    """A registered objective: its parameters, its detached coefficients and what it needs."""

    name: str
    params: tuple[Param, ...]
    coefficients: Callable[..., Coefficients]
    epsilon_param: str | None = None  # name of the param added to α in the denominator
    needs_topk_entropy: bool = False
    thresholded: bool = False  # kept ⊂ mask; token-mean denominators count kept tokens
    check_params: Callable[[dict], str | None] | None = None

    def param(self, name: str) -> Param:
        for param in self.params:
            if param.name == name:
                return param
        raise KeyError(name)


# Losses and gates: the module docstring's table; official alias strings: ALIASES below.
OBJECTIVES: dict[str, Objective] = {
    obj.name: obj
    for obj in [
        Objective("nll", (), _coef_nll),
        Objective("prob", (), _coef_prob),
        Objective("deformed_log", (_ALPHA,), _coef_deformed_log),
        Objective("tsallis", (_Q,), _coef_tsallis),
        Objective("only_top_p", (_TAU,), _threshold_coef(keep_top=True, alpha=1.0), thresholded=True),
        Objective("only_bottom_p", (_TAU,), _threshold_coef(keep_top=False, alpha=1.0), thresholded=True),
        Objective("only_top_logp", (_TAU,), _threshold_coef(keep_top=True, alpha=0.0), thresholded=True),
        Objective("only_bottom_logp", (_TAU,), _threshold_coef(keep_top=False, alpha=0.0), thresholded=True),
        Objective("dft", (), _coef_dft),
        Objective("eaft", (_K, _POWER), _coef_eaft, needs_topk_entropy=True),
        Objective("cayley", (_epsilon_param(1e-8), _FLOOR_SCALE, _ALPHA_MIN, _ALPHA_MAX), _coef_cayley,
                  epsilon_param="epsilon", check_params=_check_cayley),
        Objective("deft", (_epsilon_param(1e-6),), _coef_deft, epsilon_param="epsilon"),
    ]
}

# Official `objective_trans` strings without a number -> (canonical name, params).
ALIASES: dict[str, tuple[str, dict]] = {
    "original": ("nll", {}),
    "logp": ("nll", {}),
    "p": ("prob", {}),
    "Cayley_Trans": ("cayley", {}),
    "DEFT": ("deft", {}),
}
# Official `<Prefix>-<number>` strings -> (canonical name, parameter the number sets).
NUMBERED_ALIASES: dict[str, tuple[str, str]] = {
    "GeneralFamily": ("deformed_log", "alpha"),  # the number is α (the exponent), not Tsallis q
    "OnlyTopP": ("only_top_p", "tau"),
    "OnlyBottomP": ("only_bottom_p", "tau"),
    "OnlyTopLogP": ("only_top_logp", "tau"),
    "OnlyBottomLogP": ("only_bottom_logp", "tau"),
}
_NUMBERED_RE = re.compile(r"^(" + "|".join(NUMBERED_ALIASES) + r")-(.+)$")


def list_objectives() -> tuple[str, ...]:
    """Canonical objective names, in registry order."""
    return tuple(OBJECTIVES)


def list_aliases() -> tuple[str, ...]:
    """Official alias strings (numbered ones as `Prefix-<param>`)."""
    numbered = tuple(f"{prefix}-<{param}>" for prefix, (_, param) in NUMBERED_ALIASES.items())
    return tuple(ALIASES) + numbered


@dataclasses.dataclass(frozen=True)
class ObjectiveSpec:
    """A validated objective choice: canonical name + every parameter (defaults filled in). Hashable,
    so it can be a static argument of `jax.jit`. Build it with `parse_objective`."""

    name: str
    params: tuple[tuple[str, float | int], ...] = ()

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.name]

    @property
    def kwargs(self) -> dict[str, float | int]:
        return dict(self.params)

    def __str__(self) -> str:
        inner = ", ".join(f"{key}={value!r}" for key, value in self.params)
        return f"{self.name}({inner})"


def _valid_names_message() -> str:
    return (f"valid names: {', '.join(list_objectives())}; "
            f"official aliases: {', '.join(list_aliases())}")


def _coerce_param(objective: Objective, param: Param, value) -> float | int:
    where = f"objective {objective.name!r} parameter {param.name!r}"
    if is_traced(value):
        raise ValueError(f"{where}: parameters are static Python numbers (they select the compiled "
                         f"program), got a traced {type(value).__name__}")
    if isinstance(value, (bool, np.bool_, str, bytes)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, got {value!r}") from None
    if param.kind is int:
        if not number.is_integer():
            raise ValueError(f"{where} must be an integer, got {value!r}")
        number = int(number)
    problem = param.check(number)
    if problem:
        raise ValueError(f"{where} {problem}")
    return number


def parse_objective(name_or_spec: str | ObjectiveSpec, /, **params) -> ObjectiveSpec:
    """Validated `ObjectiveSpec` from a canonical name + keyword params, an official alias string
    (`"GeneralFamily-0.5"`, `"OnlyTopP-0.3"`, `"DEFT"`, ...), or an existing spec (params override).

    Raises ValueError for an unknown name (listing valid names and aliases), a missing, unknown or
    out-of-range parameter, or a parameter given both in the alias string and as a keyword.
    """
    if isinstance(name_or_spec, ObjectiveSpec):
        name, given = name_or_spec.name, {**name_or_spec.kwargs, **params}
    elif isinstance(name_or_spec, str):
        name, given = name_or_spec, dict(params)
        if name in ALIASES:
            name, alias_params = ALIASES[name_or_spec]
            given = {**alias_params, **given}
        elif match := _NUMBERED_RE.match(name_or_spec):
            name, param_name = NUMBERED_ALIASES[match.group(1)]
            try:
                number = float(match.group(2))
            except ValueError:
                raise ValueError(f"objective {name_or_spec!r}: {match.group(2)!r} is not a number "
                                 f"(expected {match.group(1)}-<{param_name}>, e.g. {match.group(1)}-0.5)") from None
            if param_name in given:
                raise ValueError(f"objective {name_or_spec!r} sets {param_name} in its name; do not also "
                                 f"pass {param_name}={given[param_name]!r}")
            given[param_name] = number
        elif name_or_spec in NUMBERED_ALIASES:
            _, param_name = NUMBERED_ALIASES[name_or_spec]
            raise ValueError(f"objective {name_or_spec!r} needs its {param_name} in the name: "
                             f"{name_or_spec}-<{param_name}>, e.g. {name_or_spec}-0.5")
    else:
        raise ValueError(f"objective must be a name or an ObjectiveSpec, got {name_or_spec!r}")

    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name_or_spec!r}; {_valid_names_message()}")
    objective = OBJECTIVES[name]
    known = {param.name for param in objective.params}
    unknown = sorted(set(given) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise ValueError(f"objective {name!r} got unknown parameter(s) {unknown}; it accepts: {accepted}")
    values = {}
    for param in objective.params:
        if param.name in given:
            values[param.name] = _coerce_param(objective, param, given[param.name])
        elif param.required:
            raise ValueError(f"objective {name!r} needs parameter {param.name!r} ({param.doc}), "
                             f"e.g. {name}({param.name}=0.5)")
        else:
            values[param.name] = param.default
    if objective.check_params is not None and (problem := objective.check_params(values)):
        raise ValueError(f"objective {name!r}: {problem}")
    return ObjectiveSpec(name=name, params=tuple(values.items()))


def required_topk(spec: ObjectiveSpec) -> int | None:
    """The top-k size `token_stats` must be called with for this objective (None if not needed)."""
    return spec.kwargs["k"] if spec.objective.needs_topk_entropy else None

"""Input checks shared by the three ops: one wording for one mistake, whichever op it is made in.

Every check raises ``ValueError("<op>: <what is wrong>; got <what was given>")``. Inputs may be
torch tensors or numpy arrays (``greedy_match`` takes both).
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "both_or_neither",
    "fail",
    "finite_number",
    "id_vector",
    "is_integer",
    "same_device",
    "shape_of",
]


def fail(op: str, message: str) -> None:
    raise ValueError(f"{op}: {message}")


def shape_of(x) -> object:
    """The shape of an array or tensor, else the type's name (for messages)."""
    return tuple(x.shape) if hasattr(x, "shape") else type(x).__name__


def is_integer(x) -> bool:
    """Whether an array's or tensor's dtype holds integers (bool does not count)."""
    if isinstance(x, torch.Tensor):
        return not (x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool)
    return np.issubdtype(np.asarray(x).dtype, np.integer)


def both_or_neither(op: str, a_name: str, a, b_name: str, b) -> None:
    """Two optional arguments that only make sense together."""
    if (a is None) != (b is None):
        given, missing = (a_name, b_name) if b is None else (b_name, a_name)
        fail(op, f"{given} was given without {missing}; give both {a_name} and {b_name} or neither")


def id_vector(op: str, name: str, x, n: int, dim: str) -> None:
    """``x`` is a 1-D vector of ``n`` integer ids (``dim`` names the length, e.g. ``"N"``)."""
    if not hasattr(x, "shape") or len(x.shape) != 1 or x.shape[0] != n:
        fail(op, f"{name} must be [{dim}] = [{n}]; got shape {shape_of(x)}")
    if not is_integer(x):
        fail(op, f"{name} must hold integer ids; got dtype {x.dtype}")


def same_device(op: str, name: str, x: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if x.device != ref.device:
        fail(op, f"{name} is on {x.device} but {ref_name} is on {ref.device}; use one device")


def finite_number(op: str, name: str, v, low: float, strict: bool) -> None:
    """``v`` is a real number, finite, and ``> low`` (``strict``) or ``>= low``."""
    ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating))
    ok = ok and math.isfinite(float(v)) and (float(v) > low if strict else float(v) >= low)
    if not ok:
        fail(op, f"{name} must be a finite number {'>' if strict else '>='} {low:g}; got {v!r}")

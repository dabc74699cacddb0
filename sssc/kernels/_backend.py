"""Backend selection shared by the kernels' dispatchers.

Every public op takes ``backend="auto"``. ``auto`` means Triton on CUDA tensors and the op's CPU
path (Numba or torch) otherwise. The environment variable ``SSSC_KERNEL_BACKEND`` forces one
backend for every op whose ``backend`` argument is left at ``"auto"`` (useful to A/B a whole
pipeline): ``triton`` and ``reference`` exist for all three ops; ``numba`` (soft IoU, greedy
matching) and ``torch`` (soft IoU, reverse blur) apply where the op has them, and an op without
that backend keeps its ``auto`` choice. An unknown name is an error; an explicit ``backend=``
argument always wins.

Triton on CPU tensors is only possible in Triton's interpreter (``TRITON_INTERPRET=1``); that is how
the Triton kernels are tested on machines without a GPU. The interpreter of Triton < 3.7 cannot
run a kernel whose loop bounds come from ``tl.program_id`` under NumPy >= 2.4 (soft IoU and greedy
matching have such loops); :func:`resolve_backend` says so instead of failing inside the kernel.
"""

from __future__ import annotations

import contextlib
import os
import re

import numpy as np
import torch

ENV_BACKEND = "SSSC_KERNEL_BACKEND"
# Every backend name of any op. An op that lacks the one the environment asks for keeps "auto".
ALL_BACKENDS = ("auto", "triton", "numba", "torch", "reference")

try:  # Triton is optional: it ships with Linux torch wheels, but not everywhere.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the platform
    HAS_TRITON = False


def triton_interpret() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def _release(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a version string such as ``"3.6.0+git9f3a"`` or ``"2.4.0rc1"``."""
    m = re.match(r"(\d+)\.(\d+)", version)
    if m is None:
        raise ValueError(f"cannot read a version from {version!r}")
    return int(m.group(1)), int(m.group(2))


def interpreter_problem(triton_version: str, numpy_version: str) -> str | None:
    """Why Triton's interpreter cannot run a kernel with ``tl.program_id``-derived loop bounds
    under these versions, or None when it can.

    Triton < 3.7's interpreter holds ``tl.program_id`` (and all arithmetic on it) as a 1-element
    array, and ``range()`` turns a bound into an int with ``int(array)``, which NumPy >= 2.4 refuses
    for arrays that are not 0-d. Measured on this project's kernels (CPU, 2026-12-06): Triton 3.3.1,
    3.5.1 and 3.6.0 pass with NumPy 2.3.5 and fail with NumPy 2.4.6; 3.7.0 passes with both, 3.7.1
    and 3.8.0 with NumPy 2.4.6. Compiled kernels are not affected.
    """
    if _release(triton_version) < (3, 7) and _release(numpy_version) >= (2, 4):
        return (
            f"Triton {triton_version}'s interpreter cannot run this kernel with NumPy "
            f"{numpy_version}: Triton < 3.7 interprets loop bounds derived from tl.program_id as "
            "1-element arrays, which NumPy >= 2.4 does not convert to int. Interpret with "
            "triton>=3.7 or numpy<2.4, or run on a CUDA device"
        )
    return None


def _versions() -> tuple[str, str]:
    """The installed Triton's and NumPy's versions (a function, so that tests can replace it)."""
    import triton

    return triton.__version__, np.__version__


def resolve_backend(
    op: str,
    requested: str,
    device: torch.device,
    choices: tuple[str, ...],
    cpu_default: str,
    pid_loop_bounds: bool = False,
) -> str:
    """Turn ``backend="auto"`` (or an env override) into a concrete backend name.

    Args:
        op: the op's name, for error messages.
        requested: the caller's ``backend`` argument.
        device: the device the inputs live on.
        choices: the backends this op implements (always including ``"triton"`` and
            ``"reference"``).
        cpu_default: the backend ``auto`` picks for CPU inputs.
        pid_loop_bounds: the op's Triton kernel has loops whose bounds come from
            ``tl.program_id``; in the interpreter, :func:`interpreter_problem` then applies.

    Returns:
        One of ``choices``.
    """
    name = requested
    if name == "auto":
        name = os.environ.get(ENV_BACKEND, "auto") or "auto"
        if name not in ALL_BACKENDS:
            raise ValueError(
                f"{op}: environment variable {ENV_BACKEND}={name!r} is not a backend; choose one "
                f"of {ALL_BACKENDS}"
            )
        if name not in choices:  # e.g. numba for reverse_blur, which has no Numba path
            name = "auto"
    if name == "auto":
        return "triton" if device.type == "cuda" and HAS_TRITON else cpu_default
    if name not in choices:
        raise ValueError(f"{op}: backend={name!r} is unknown; choose one of {('auto',) + choices}")
    if name == "triton":
        if not HAS_TRITON:
            raise ValueError(
                f"{op}: backend='triton' needs the triton package, which is not installed"
            )
        if device.type != "cuda" and not triton_interpret():
            raise ValueError(
                f"{op}: backend='triton' got {device.type} tensors; Triton runs on CUDA, or on the "
                "CPU in its interpreter (set TRITON_INTERPRET=1 before importing sssc.kernels)"
            )
        if device.type != "cuda" and pid_loop_bounds:
            problem = interpreter_problem(*_versions())
            if problem is not None:
                raise RuntimeError(f"{op}: backend='triton': {problem}")
    return name


@contextlib.contextmanager
def keep_torch_threads():
    """Keep torch's intra-op thread count across a Numba ``parallel=True`` call.

    Numba's OpenMP threading layer sets OpenMP's thread count when it starts a parallel region,
    and torch's CPU ops read that same setting: without this guard a caller's
    ``torch.set_num_threads(1)`` silently becomes Numba's count (2 on this machine) after the
    first kernel call, which changes torch's summation order and the speed of every later op.
    """
    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)

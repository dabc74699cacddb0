"""Backend selection shared by the kernels' dispatchers.

Every public op takes ``backend="auto"``. ``auto`` means Triton on CUDA tensors and the op's CPU
path (Numba or torch) otherwise. The environment variable ``SSSC_KERNEL_BACKEND`` forces one
backend for every op whose ``backend`` argument is left at ``"auto"`` (useful to A/B a whole
pipeline): ``triton`` and ``reference`` exist for all three ops; ``numba`` (soft IoU, greedy
matching) and ``torch`` (soft IoU, reverse blur) apply where the op has them, and an op without
that backend keeps its ``auto`` choice. An unknown name is an error; an explicit ``backend=``
argument always wins.

Triton on CPU tensors is only possible in Triton's interpreter (``TRITON_INTERPRET=1``); that is how
the Triton kernels are tested on machines without a GPU.
"""

from __future__ import annotations

import contextlib
import os

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


def resolve_backend(
    op: str, requested: str, device: torch.device, choices: tuple[str, ...], cpu_default: str
) -> str:
    """Turn ``backend="auto"`` (or an env override) into a concrete backend name.

    Args:
        op: the op's name, for error messages.
        requested: the caller's ``backend`` argument.
        device: the device the inputs live on.
        choices: the backends this op implements (always including ``"triton"`` and
            ``"reference"``).
        cpu_default: the backend ``auto`` picks for CPU inputs.

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

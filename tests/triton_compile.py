"""Compile Triton kernels for a real GPU target, in a fresh process with a cold cache.

Why a fresh process: once ``TRITON_INTERPRET=1`` has run a kernel in a process, the interpreter
has patched ``triton.language`` for itself, and a real compile in that process can fail (or pass)
depending on which tests ran before. Why a cold cache: a warm ``~/.triton/cache`` returns an
earlier compile's result and hides a compile that fails today, as on a new machine.

Each test hands a script that prints ``OK`` when every compile passed, or exits after printing
``SKIP: <why>`` when this Triton cannot compile for the target here (no ``ASTSource`` API, no
usable ``ptxas``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

# Prepended to every script: the compile API, the Hopper target and a skip for a missing ptxas.
PRELUDE = r"""
import sys
try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, compile as _compile
except ImportError as e:  # the compile API moves between Triton releases
    print("SKIP: this Triton has no ASTSource/GPUTarget:", e)
    sys.exit(0)

TARGET = GPUTarget("cuda", 90, 32)


def compile_sm90(fn, signature, constexprs):
    try:
        return _compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
    except RuntimeError as e:
        if "ptxas" in str(e).lower():
            print("SKIP: no usable ptxas here:", e)
            sys.exit(0)
        raise
"""


def run_compile_script(body: str, timeout: float = 600) -> None:
    """Run ``PRELUDE + body`` in a fresh interpreter without ``TRITON_INTERPRET`` and with an
    empty ``TRITON_CACHE_DIR``; skip the test on ``SKIP:``, fail unless it printed ``OK``."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    with tempfile.TemporaryDirectory(prefix="sssc-triton-cache-") as cache:
        env["TRITON_CACHE_DIR"] = cache
        res = subprocess.run(
            [sys.executable, "-c", PRELUDE + body],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if res.stdout.startswith("SKIP:"):
        pytest.skip(res.stdout.strip())
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stdout + res.stderr

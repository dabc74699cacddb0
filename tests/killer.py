"""Run ``sssc-train`` in this process and SIGKILL it at a named point (tests only).

    python tests/killer.py MODULE:NAME:N[:before|after][:SIGNAL] [ARGS...]

kills the process with SIGKILL when ``MODULE.NAME`` is called for the N-th time, before the call or
after it returns (the default). With ``SIGNAL`` (``SIGINT``, ``SIGTERM``) it sends that signal
instead, to its whole process group, as a terminal's Ctrl-C does (start it in a session of its
own). ``none`` runs without a kill. The stages' shard size is set to 8 images (for every run, the
reference too), so that a small dataset has several shards to be killed between. No sssc code
knows about this: the kill comes from outside, as a kill -9 would.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys


def _arm(spec: str) -> None:
    mod_name, name, n, *when = spec.split(":")
    mod = importlib.import_module(mod_name)
    real = getattr(mod, name)
    count = [0]
    before = "before" in when
    sig = next((getattr(signal, w) for w in when if w.startswith("SIG")), None)

    def send():
        if sig is None:
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            os.killpg(os.getpgid(0), sig)

    def wrapper(*a, **k):
        count[0] += 1
        if count[0] == int(n) and before:
            send()
        out = real(*a, **k)
        if count[0] == int(n) and not before:
            send()
        return out

    setattr(mod, name, wrapper)


def main() -> int:
    import torch

    torch.set_num_threads(1)
    import sssc.stages

    sssc.stages.SHARD_SIZE = 8
    spec, args = sys.argv[1], sys.argv[2:]
    if spec != "none":
        _arm(spec)
    from sssc.cli import train_main

    return train_main(args)


if __name__ == "__main__":
    sys.exit(main())

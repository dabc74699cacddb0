"""Two-rank gloo runs in one test: ``spawn`` picks a free port for torch's rendezvous and retries
with a new one when another process took it between the pick and the bind (the only failure it
retries; every other one reaches the test unchanged)."""

from __future__ import annotations

import socket
import tempfile

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, args: tuple, nprocs: int = 2, tries: int = 3) -> None:
    """``mp.spawn(fn, args=(nprocs, port, *args))``; a rank that failed to listen on ``port``
    (EADDRINUSE) makes it try again on a fresh port, at most ``tries`` times.

    torch gives each rank a ``pytorch-errorfile-*.pickle`` in the temporary folder for its
    traceback and leaves it there when the rank fails, as some tests make ranks do on purpose:
    they are made in a folder of their own here, removed afterwards."""
    for attempt in range(tries):
        old = tempfile.tempdir
        try:
            with tempfile.TemporaryDirectory(prefix="sssc-spawn-") as d:
                tempfile.tempdir = d
                try:
                    mp.spawn(fn, args=(nprocs, free_port(), *args), nprocs=nprocs)
                finally:
                    tempfile.tempdir = old
            return
        except mp.ProcessRaisedException as e:
            if "EADDRINUSE" not in str(e) or attempt == tries - 1:
                raise


def join(rank: int, world: int, port: int) -> None:
    """In a spawned rank: the environment torchrun would give it, and one torch thread."""
    import os

    import torch

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)

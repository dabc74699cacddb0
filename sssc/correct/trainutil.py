"""Plumbing of the Stage 3 training loop (:mod:`sssc.correct.train`): process groups, global batch
norm, atomic checkpoints with RNG states, the JSON Lines log, progress bar, TensorBoard, curves.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sys
import threading
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..rundir import Interrupted, atomic_write_text

__all__ = [
    "GlobalBN2d",
    "Interrupted",
    "append_log",
    "cleanup_dist",
    "get_rng",
    "graceful_stop",
    "load_checkpoint",
    "plot_curves",
    "progress_bar",
    "read_log",
    "save_checkpoint",
    "set_rng",
    "setup_dist",
    "stop_agreed",
    "stop_signal",
    "sync_batchnorm",
    "tensorboard",
    "truncate_log",
]


# ----------------------------------------------------------------------------- a graceful stop


_STOP: list[int] = []  # the signals that asked for a stop inside graceful_stop()
_INSTALLED: list[int] = []  # the pid whose graceful_stop() block is open


@contextlib.contextmanager
def graceful_stop():
    """``with graceful_stop():`` SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption notice)
    ask the training loop to stop after the step in progress, save a checkpoint and raise
    :class:`Interrupted`, instead of losing the work since the last checkpoint. A second SIGINT
    stops at once (``KeyboardInterrupt``); SIGTERM again changes nothing (SIGKILL stops at once).

    Installs nothing outside the main thread, or inside another such block (whose stop request
    stands until it ends). Children forked inside the block (data loader workers) do as Python
    does without it: SIGINT raises ``KeyboardInterrupt``, which a worker takes as its cue to end
    quietly, and SIGTERM ends the process.
    """
    if threading.current_thread() is not threading.main_thread() or _INSTALLED:
        yield
        return
    owner = os.getpid()

    def handler(signum, frame):
        if os.getpid() != owner:  # a forked child: the default behaviour
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT and signal.SIGINT in _STOP:
            raise KeyboardInterrupt
        if not _STOP:
            print(
                f"\nsssc: {signal.Signals(signum).name}: stopping after the step in progress, "
                "with a checkpoint (Ctrl-C again stops at once)",
                file=sys.stderr,
                flush=True,
            )
        _STOP.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _INSTALLED.append(owner)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _STOP.clear()
        _INSTALLED.clear()


def stop_signal() -> int | None:
    """The first signal that asked for a stop in :func:`graceful_stop`; ``None`` if none did."""
    return _STOP[0] if _STOP else None


def stop_agreed(world: int, device: str | torch.device) -> int | None:
    """:func:`stop_signal`, agreed on by every rank (one all-reduce): a stop any rank was asked
    for (SIGTERM on a rank that had none), so that no rank goes on alone into a collective."""
    signum = stop_signal()
    if world == 1:
        return signum
    flag = torch.tensor([0.0 if signum is None else 1.0], device=device)
    dist.all_reduce(flag)
    return (signum or signal.SIGTERM) if float(flag) > 0 else None


# --------------------------------------------------------------------------------- the process


def setup_dist() -> tuple[int, int, bool]:
    """``(rank, world, whether we created the process group)`` from torchrun's environment."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        return dist.get_rank(), world, True
    return (dist.get_rank() if dist.is_initialized() else 0), world, False


def cleanup_dist(own_pg: bool) -> None:
    if own_pg and dist.is_initialized():
        dist.destroy_process_group()


def sync_batchnorm(model, device):
    """Batch norm over the global batch: SyncBatchNorm on CUDA, :class:`GlobalBN2d` on CPU."""
    if device.type == "cuda":
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if type(child) is torch.nn.BatchNorm2d:
                new = GlobalBN2d(child.num_features, child.eps, child.momentum)
                new.load_state_dict(child.state_dict())
                setattr(mod, child_name, new.to(device))
    return model


class GlobalBN2d(torch.nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are all-reduced over the ranks (CPU/gloo too)."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce  # differentiable

        n = x.new_tensor(x.shape[0] * x.shape[2] * x.shape[3])
        s = all_reduce(torch.cat([x.sum((0, 2, 3)), (x * x).sum((0, 2, 3)), n[None]]))
        c, count = self.num_features, s[-1]
        mean, var = s[:c] / count, s[c : 2 * c] / count - (s[:c] / count) ** 2
        with torch.no_grad():
            self.num_batches_tracked += 1
            unbiased = var * count / (count - 1).clamp_min(1)
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(unbiased, self.momentum)
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        return y * self.weight[None, :, None, None] + self.bias[None, :, None, None]


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, most often); the previous one is intact."""


def save_checkpoint(path: Path, state: dict, keep_previous: bool = False) -> None:
    """Write a checkpoint atomically (a temporary file, then ``os.replace``).

    With ``keep_previous`` the file it replaces stays as ``<stem>.prev.pt`` (a hard link made
    before the swap), the fallback of the NaN stop. Every step leaves a whole checkpoint at
    ``path`` or at the previous one: a kill never leaves half a file in either place.

    Raises:
        CheckpointWriteError: the write failed (torch reports a full disk as "basic_ios::clear:
            iostream error"); the message names the file, the free space and what was kept.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        try:
            torch.save(state, tmp)
        except (RuntimeError, OSError) as e:
            # A full disk reaches here as torch's "basic_ios::clear: iostream error".
            free = shutil.disk_usage(path.parent).free / 2**20
            kept = f"the previous {path.name} is intact" if path.exists() else "nothing replaced"
            raise CheckpointWriteError(
                f"could not write checkpoint {path} ({free:.0f} MiB free on its disk; {kept}): "
                f"{e}. Free some space and run the same command again to resume."
            ) from e
        if keep_previous and path.exists():
            prev = path.with_name(path.stem + ".prev" + path.suffix)
            link = prev.with_name(f".{prev.name}.tmp-{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            os.link(path, link)
            os.replace(link, prev)
        os.replace(tmp, path)  # atomic: a kill leaves the previous checkpoint intact
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_checkpoint(path: Path) -> dict | None:
    """A checkpoint sssc wrote, its zip CRCs checked; ``None`` when there is no file.

    Raises:
        CheckpointError: the file is corrupt (a CRC fails), truncated, or not an sssc training
            checkpoint; the message names it and what to do.
    """
    from .checkpoints import CheckpointError, read_checkpoint

    if not path.exists():
        return None
    state = read_checkpoint(path)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(
            f"{path}: not an sssc training checkpoint (no model state); move it away, or rerun "
            "with --no-resume to start the phase again"
        )
    return state


def get_rng(gen: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "gen": gen.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": random.getstate(),
    }


def set_rng(s: dict, gen: torch.Generator) -> None:
    torch.set_rng_state(s["torch"]), gen.set_state(s["gen"])
    if s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), *n[2:]))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in s["python"]))


def append_log(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def read_log(path: Path) -> list[dict]:
    """The records of a ``log.jsonl``. A torn last line (a kill mid-write) is dropped.

    Raises:
        ValueError: a line before the last one is not a JSON record (named with its number).
    """
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for n, ln in enumerate(lines, 1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict) or "global_step" not in rec:
                raise ValueError("not a log record")
        except ValueError as e:
            if n == len(lines):
                break  # the line a killed run was writing
            raise ValueError(
                f"{path}, line {n}: not a log record ({e}); the log is damaged. Move it away "
                "to resume without it, or rerun with --no-resume"
            ) from None
        out.append(rec)
    return out


def truncate_log(path: Path, gstep: int) -> None:
    """Drop the lines a killed run wrote after the checkpoint it resumes from."""
    if path.exists():
        keep = [r for r in read_log(path) if r["global_step"] <= gstep]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in keep))


def progress_bar(total: int, start: int, desc: str, rank: int):
    if rank != 0:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc=desc, unit="batch", dynamic_ncols=True)


def tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard is not installed: no TensorBoard scalars (log.jsonl has them)")
        return None
    return SummaryWriter(str(out / "tb"))


def plot_curves(log_path: Path, png: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves.png (log.jsonl has the curves)")
        return
    recs = read_log(log_path)
    steps = [(r["global_step"], r["loss"]) for r in recs if "loss" in r]
    evals = [(r["epoch"], r["eval"]["mIoU"], r["eval"]["oIoU"]) for r in recs if "eval" in r]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    if steps:
        a.plot(*zip(*steps, strict=True), lw=0.8)
    a.set(xlabel="step", ylabel="training loss", title=png.parent.name)
    if evals:
        e, miou, oiou = zip(*evals, strict=True)
        b.plot(e, miou, "o-", label="mIoU"), b.plot(e, oiou, "s-", label="oIoU")
        b.legend()
    b.set(xlabel="epoch", ylabel="val (%)", title="evaluation (GT, for the record only)")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)

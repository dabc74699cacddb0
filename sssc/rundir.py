"""The run folder: one writer at a time, the settings each output was made with, atomic files.

``sssc-train --run DIR`` writes one sub-folder per stage or training phase (``segment``,
``select``, ``bootstrap``, ``correct``, ``plus_epochs``). Three rules keep a rerun honest:

* **One writer.** :class:`RunLock` holds ``DIR/.sssc.lock`` (an ``flock``, released by the kernel
  when the holder dies) and writes the holder's pid, host and command into it. A second run gets a
  :class:`RunDirError` naming the holder; a lock left by a dead process is taken over, with a
  message.
* **Outputs carry their settings.** Every stage and phase writes ``config.yaml`` (the whole
  resolved config) before its first output. A rerun compares the keys that *define* that output
  (:func:`stage_keys`: its own section and everything upstream) and refuses a difference, naming
  each key, unless the run starts fresh (``--no-resume``). Operational keys (threads, workers,
  device, logging, paths) never count.
* **Atomic files.** :func:`atomic_write_text` writes a temporary file next to the target and
  renames it into place, so a kill leaves the old file or the new one, never half of one.

Only files sssc names itself are ever replaced or removed (:data:`OWN_FILES`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Interrupted",
    "OWN_FILES",
    "RESUMABLE_AFTER_DIVERGENCE",
    "RunDirError",
    "RunLock",
    "add_config_args",
    "atomic_file",
    "atomic_write_text",
    "check_stage_config",
    "clear_outputs",
    "fsync_dir",
    "load_run_config",
    "config_diff",
    "missing_store",
    "open_run_dir",
    "pid_alive",
    "read_json",
    "stage_config",
    "stage_keys",
    "write_stage_config",
]

STAGE_ORDER = ("segment", "select", "bootstrap", "correct", "plus_epochs")
TRAIN_PHASES = STAGE_ORDER[2:]  # the phases of Stage 3, which train a model

# What a stage or phase writes, by name: the only files sssc replaces or removes in it.
OWN_FILES = (
    "config.yaml",
    "store.json",  # the shards are rewritten in place (write_store(fresh=True))
    "metrics.json",
    "checkpoint.pt",
    "checkpoint.prev.pt",
    "checkpoint.diverged.pt",
    "best.pt",
    "log.jsonl",
    "curves.png",
    "console.log",
)

# Keys that change how a run goes, not what it makes.
_OPERATIONAL = {
    "recipe",  # its effect is in the keys it sets, which are compared
    "device",
    "data.root",
    "data.image_dir",
    "train.num_workers",
    "train.threads",
    "train.bootstrap_threads",
    "train.log_every",
    "train.checkpoint_every",
    "train.resume",
    "train.cache_data",
    "train.compile",
    "train.plus_epochs",  # whether the +epochs phase runs at all
    "train.parallel_phases",
    "select.models.num_workers",
    "select.models.batch_size",
}
_TRAINING_DATA = {
    "data.batch_expressions",
    "data.batching",
    "data.samples_gpus",
    "data.samples_images_per_load",
    "data.samples_order",
    "data.samples_skip_first",
    "data.samples_draw",
    "data.samples_workers",
    "data.samples_target_check",
    "data.text_field",  # Stages 1-2 read REFER's sent, as the official ones do, whatever it says
}
_CORRECT_ONLY = {
    "train.correct_epochs",
    "train.candidates_at",
    "train.unmatched",
    "train.single_candidate",
    "train.match_ties",
    "train.match_size",
}
# Keys with no effect unless another key has a value: ``prefix -> (key, test of its value)``, or a
# list of such pairs (inert when any fails). A key that is inert in both configs is not compared,
# so a change that cannot alter the outputs (or a key an older stored config lacks) does not refuse
# a resume.
_ONLY_WHEN: dict[str, tuple[str, Any] | list[tuple[str, Any]]] = {
    "data.samples_gpus": ("data.batching", "samples".__eq__),
    "data.samples_images_per_load": ("data.batching", "samples".__eq__),
    "data.samples_order": ("data.batching", "samples".__eq__),
    "data.samples_skip_first": ("data.batching", "samples".__eq__),
    "data.samples_draw": ("data.batching", "samples".__eq__),
    "data.samples_target_check": ("data.batching", "samples".__eq__),
    "data.samples_workers": [
        ("data.batching", "samples".__eq__),
        ("data.samples_draw", "official".__eq__),
    ],
    "data.synth.": ("data.dataset", "synthetic".__eq__),
    "segment.simulate.": ("segment.backend", "simulated".__eq__),
    "segment.models.": ("segment.backend", "models".__eq__),
    "segment.models.noun_fallback": ("segment.models.nouns", "spacy".__eq__),
    "segment.models.nltk_data": [
        ("segment.models.nouns", "spacy".__eq__),
        ("segment.models.noun_fallback", "nltk".__eq__),
    ],
    "select.simulate.": ("select.backend", "simulated".__eq__),
    "select.models.": ("select.backend", "models".__eq__),
    "train.iou_loss_phases": ("train.iou_loss_weight", bool),
    "train.selection_val": ("train.selection", "best_gt".__eq__),
}
# Keys added after runs existed, with the value that gives the behaviour sssc had before: a stored
# config without one is compared as if it held this value.
_ADDED_LATER: dict[str, Any] = {
    "train.lr_horizon": "steps",  # 2026-12-06; the poly decay's total was always the phase's steps
    "select.candidates": "whole",  # 2026-12-07; the pools were always Stage 1's masks
    "train.label_background": "minimum",  # 2026-12-07
    "data.samples_order": "sssc",  # 2026-12-07; the images were always permuted by sssc's draw
    # 2026-12-07: every GPU's first load of an epoch was trained on; one expression per object
    # was always sssc's draw
    "data.samples_skip_first": False,
    "data.samples_draw": "sssc",
    # 2026-12-07: Stage 2 always scored the fast backends' approximate prompts
    "select.models.composite": "fast",
    # 2026-12-07: Stage 1 always dropped [CLS] from a box's phrase and clamped SAM's boxes
    "segment.models.gdino_cls_token": "ignored",
    "segment.models.sam_box": "clamped",
    "segment.models.sam_calls": "per_image",
    "segment.models.image_grouping": "image",
    # 2026-12-07: an expression without a spaCy noun was queried as "object", without NLTK
    "segment.models.noun_fallback": "none",
    "segment.models.nltk_data": "",
    # 2026-12-07: S1 candidates were told apart as stored; one the resize lost stayed eligible
    "train.candidates_at": "stored",
    # 2026-12-07: torch's RNG was seeded once per phase
    "train.epoch_seed": -1,
    # 2026-12-07: samples batching judged a target empty at the stored resolution only
    "data.samples_target_check": "stored",
    # 2026-12-07: Stage 1 always read the pixels as stored
    "segment.models.image_orientation": "stored",
    # 2026-12-07: refs whose GT mask is empty were left out
    "data.empty_gt": "skip",
    # 2026-12-07: expressions without text were always left out
    "data.empty_sentences": "skip",
}
# After a NaN stop, a resume may lower the learning rate or add clipping.
RESUMABLE_AFTER_DIVERGENCE = ("train.lr", "train.grad_clip")


class RunDirError(Exception):
    """The run folder cannot be used as asked; the message says why and what to do."""


class Interrupted(Exception):
    """A run stopped at a SIGINT or SIGTERM after saving its state; the same command resumes it
    (:func:`sssc.correct.trainutil.graceful_stop`).

    Attributes:
        signum: the signal (``sssc-train`` exits with ``128 + signum``, as a shell reports it).
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def open_run_dir(path: str | Path) -> Path:
    """The run folder, created when missing; a path that is a file is an error."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise RunDirError(f"--run {p}: is a file, not a run folder; give a folder path")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--run {p}: cannot create the run folder: {e.strerror or e}") from None
    return p


def missing_store(run_dir: str | Path, stage: str) -> str | None:
    """Why a reader (``sssc eval``, ``sssc viz``) finds no ``stage`` store in a run folder, naming
    the command that makes it; ``None`` when its ``store.json`` is there (not validated)."""
    run = Path(run_dir)
    if not run.is_dir():
        what = "is a file, not a run folder" if run.exists() else "no such run folder"
        return f"--run {run}: {what}"
    if (run / stage / "store.json").is_file():
        return None
    what = "Stage 1" if stage == "segment" else "Stage 2"
    return (
        f"{run / stage}: no {what} store here (missing store.json); "
        f"`sssc-train --stage {stage} --run {run}` makes it"
    )


# ---------------------------------------------------------------------------------------- lock


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """``with RunLock(run_dir):`` — the one writer of a run folder.

    Raises:
        RunDirError: another live process holds the folder (its pid and command are named).
    """

    NAME = ".sssc.lock"

    def __init__(self, run_dir: str | Path, log=None):
        self.path = Path(run_dir) / self.NAME
        self.log = log or (lambda m: print(m, file=sys.stderr))
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder(fd)
            os.close(fd)
            raise RunDirError(
                f"{self.path.parent}: in use by another sssc run ({holder}); wait for it to end, "
                "or use another --run"
            ) from None
        old = self._read(fd)
        if old.get("pid") and old.get("host") == socket.gethostname():
            state = "no longer running" if not pid_alive(int(old["pid"])) else "not holding it"
            self.log(f"sssc: taking over the lock {self.path} left by pid {old['pid']} ({state})")
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # a clean exit leaves no holder to take over from
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @staticmethod
    def _read(fd: int) -> dict:
        with contextlib.suppress(ValueError, OSError):
            d = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return d if isinstance(d, dict) else {}
        return {}

    def _holder(self, fd: int) -> str:
        d = self._read(fd)
        if not d:
            return "holder unknown"
        return f"pid {d.get('pid')} on {d.get('host')} since {d.get('since')}: {d.get('command')}"


# ------------------------------------------------------------------------------- atomic files


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w"):
    """Open a temporary file beside ``path``; on a clean exit fsync it, rename it onto ``path``
    and fsync the folder (durable, atomic). On an error the temporary file is removed and
    ``path`` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as f:
        f.write(text)


def fsync_dir(d: Path) -> None:
    """Make a rename in ``d`` durable (where the platform lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_json(path: str | Path, what: str = "file") -> Any:
    """A JSON file's content; a missing, empty or corrupt file is a :class:`RunDirError`."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise RunDirError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise RunDirError(
            f"{path}: the {what} is {'empty' if not text.strip() else f'not valid JSON ({e})'}; "
            "rerun the stage to write it again"
        ) from None


def clear_outputs(stage_dir: Path) -> None:
    """Remove what sssc wrote in a stage folder (:data:`OWN_FILES`), before a fresh start."""
    for name in OWN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (stage_dir / name).unlink()


# ---------------------------------------------------------------------------- stage settings


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out |= _flat(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def stage_keys(stage: str, key: str) -> bool:
    """Whether dotted ``key`` defines the output of ``stage`` (its section and every upstream)."""
    if key in _OPERATIONAL:
        return False
    section = key.split(".")[0]
    if stage in ("segment", "select"):
        if section == "data":
            return key not in _TRAINING_DATA
        return section in ("segment", "eval") or (stage == "select" and section == "select")
    if stage not in STAGE_ORDER:
        raise ValueError(f"unknown stage {stage!r}")
    if section == "train":
        if key in _CORRECT_ONLY:
            return stage == "correct" or (stage == "plus_epochs" and key == "train.correct_epochs")
        return True
    return section in ("seed", "data", "segment", "select", "eval")


def stage_config(cfg_dict: dict, stage: str) -> dict[str, Any]:
    """The keys of a config (as :func:`sssc.config.config_to_dict`) that define ``stage``."""
    return {k: v for k, v in _flat(cfg_dict).items() if stage_keys(stage, k)}


def _inert(flat: dict[str, Any], keys: set[str]) -> set[str]:
    """Those of ``keys`` that would have no effect under a flat config's values (present in it or
    not; :data:`_ONLY_WHEN`)."""
    off = [
        p
        for p, conds in _ONLY_WHEN.items()
        for key, test in (conds if isinstance(conds, list) else [conds])
        if key in flat and not test(flat[key])
    ]
    return {k for k in keys if any(k == p or (p.endswith(".") and k.startswith(p)) for p in off)}


def config_diff(stored: dict, cfg_dict: dict, stage: str) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, this run's value)`` for every defining key that differs, leaving out
    keys inert in both configs and reading a key absent from ``stored`` as :data:`_ADDED_LATER`
    says."""
    old, new = stage_config(stored, stage), stage_config(cfg_dict, stage)
    old |= {k: v for k, v in _ADDED_LATER.items() if k in new and k not in old}
    keys = set(old) | set(new)
    return [
        (k, old.get(k, _ABSENT), new.get(k, _ABSENT))
        for k in sorted(keys - (_inert(old, keys) & _inert(new, keys)))
        if old.get(k, _ABSENT) != new.get(k, _ABSENT)
    ]


def write_stage_config(stage_dir: Path, cfg_dict: dict) -> None:
    """``<stage>/config.yaml``: the whole resolved config this stage's outputs are made with
    (``data.root`` and ``data.image_dir`` as absolute paths)."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    snap = json.loads(json.dumps(cfg_dict))
    data = snap.get("data", {})
    for key in ("root", "image_dir"):  # readers elsewhere (sssc viz, eval) find the same data
        if data.get(key):
            data[key] = str(Path(data[key]).resolve())
    atomic_write_text(stage_dir / "config.yaml", yaml.safe_dump(snap, sort_keys=False))


def read_stage_config(stage_dir: Path) -> dict | None:
    """The config a stage folder was made with; ``None`` when it has none."""
    path = stage_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"{path}: unreadable ({e}); rerun with --no-resume") from None
    if not isinstance(d, dict):
        raise RunDirError(f"{path}: not a config mapping; rerun with --no-resume")
    return d


_ABSENT = object()  # a key one config has and the other lacks (another sssc version)


def _show(v: Any) -> str:
    return "(absent)" if v is _ABSENT else json.dumps(v)


def check_stage_config(
    stage_dir: Path, cfg_dict: dict, stage: str, allow: tuple[str, ...] = ()
) -> list[tuple[str, Any, Any]]:
    """Refuse a stage folder made with other defining settings than ``cfg_dict``'s.

    Args:
        stage_dir: the stage or phase folder.
        cfg_dict: this run's resolved config.
        stage: the stage or phase it holds.
        allow: keys that may differ (returned, not refused).

    Returns:
        The allowed differences.

    Raises:
        RunDirError: a defining key differs (each is named, with both values), or the folder holds
            outputs but no ``config.yaml``.
    """
    stored = read_stage_config(stage_dir)
    if stored is None:
        if any((stage_dir / n).exists() for n in ("metrics.json", "checkpoint.pt", "store.json")):
            raise RunDirError(
                f"{stage_dir}: holds outputs but no config.yaml, so what made them is unknown "
                "(an older sssc?); rerun with --no-resume to redo it, or use another --run"
            )
        return []
    diff = config_diff(stored, cfg_dict, stage)
    refused = [d for d in diff if d[0] not in allow]
    if refused:
        shown = "; ".join(f"{k}: {_show(a)} there, {_show(b)} now" for k, a, b in refused[:8])
        more = f" (and {len(refused) - 8} more)" if len(refused) > 8 else ""
        raise RunDirError(
            f"{stage_dir} was made with other settings: {shown}{more}. To redo it with these, "
            "rerun with --no-resume (it overwrites sssc's outputs there), or use another --run"
        )
    return [d for d in diff if d[0] in allow]


# ----------------------------------------------------------------------- reading a run's config


def add_config_args(parser, config_help: str, set_help: str = "override a config key") -> None:
    """``--config`` and ``--set KEY=VALUE`` (repeatable), as every sssc command takes them."""
    parser.add_argument("--config", help=config_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=set_help)


def load_run_config(run_dir: str | Path, stage: str, config: str | None, sets: list[str]) -> Any:
    """The config a reader of a run uses: ``config`` if given, else the one ``stage`` ran with
    (``<run>/<stage>/config.yaml``), else the embedded default; then the ``--set`` overrides.

    Raises:
        ConfigError: as :func:`sssc.config.load_config`.
    """
    from .config import load_config

    snapshot = Path(run_dir) / stage / "config.yaml"
    if config is None and snapshot.is_file():
        config = str(snapshot)
    return load_config(config, sets)

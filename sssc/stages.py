"""The orchestrator behind ``sssc-train --stage ...``: it runs the stages in order, nothing else.

Stage 1 (``segment``) and Stage 2 (``select``) each run one producer (:class:`sssc.store.Producer`:
``sssc.segment.simulated``/``sssc.segment.runner``, ``sssc.select.simulated``/
``sssc.select.runner``, by ``<stage>.backend``) into the pseudo-label store under
``<run>/<stage>/`` (``store.json``, ``shards/``), with ``log.txt`` (appended by every run),
``config.yaml`` (the settings it ran with) and ``metrics.json`` (scored by
:func:`sssc.eval.stores.evaluate_stage`: the S1 oracle for ``segment``, the S+S choice for
``select``). Stage 3 (``bootstrap``, ``correct``) runs :func:`sssc.correct.train.train_phase` per
phase and prints :func:`sssc.eval.stores.stage3_table`.

The stores cover the images of ``data.train_split`` (the labels Stage 3 trains on) and of
``data.eval_split`` (the ones scored). A rerun skips finished shards; every stage runs the missing
ones before it. The run folder's rules (one writer, settings checked, atomic files) are
:mod:`sssc.rundir`'s.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .config import resolve_device
from .data.refer import DatasetError, Refer
from .eval.metrics import format_table
from .eval.stores import evaluate_stage, oracle_derived, stage3_table
from .rundir import (
    RunDirError,
    RunLock,
    atomic_write_text,
    check_stage_config,
    clear_outputs,
    open_run_dir,
    read_json,
    write_stage_config,
)
from .store import Store, StoreError, store_complete, write_store

__all__ = ["StageError", "run_stage"]

SHARD_SIZE = 256


class _Ranks:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def device(self, cfg: Any) -> str:
        dev = resolve_device(cfg.device)
        if dev == "cuda" and self.world > 1:
            return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        return dev


class StageError(Exception):
    """A stage cannot run; the message says why and what to do (``sssc-train`` exits with 2)."""


def run_stage(stage: str, cfg: Any, run_dir: str | Path) -> dict:
    """Run one stage (and the missing ones before it) and return its metrics.

    The run folder has one writer (:class:`sssc.rundir.RunLock`). Each stage's outputs carry the
    settings they were made with: a stage made with other defining settings is refused, naming
    the keys, unless ``train.resume`` is off (``--no-resume``), which redoes the requested stage,
    and every one whose settings differ, from scratch. Complete upstream outputs made with the
    same settings are reused.

    Args:
        stage: ``segment`` | ``select`` | ``bootstrap`` | ``correct`` | ``all``.
        cfg: a :class:`sssc.config.RunConfig`.
        run_dir: the run directory; the stage writes under ``<run_dir>/<stage>/``.

    Returns:
        The stage's ``metrics.json`` content.

    Raises:
        StageError: an unknown stage, a busy or unusable run folder, outputs made with other
            settings, a dataset or store problem.
    """
    if stage not in ("segment", "select", "bootstrap", "correct", "all"):
        raise StageError(f"unknown stage {stage!r}; choose segment, select, bootstrap or correct")
    if stage in ("bootstrap", "correct", "all"):
        from .correct.phase import TrainError, check_image_size

        try:
            check_image_size(cfg.train)  # before Stages 1-2, which may take hours
        except TrainError as e:
            raise StageError(f"--stage {stage}: {e}") from None
    # Missing weights and data fail before anything is created or started, all in one message.
    _check_model_weights(cfg, stage, Path(run_dir))
    try:
        run_dir = open_run_dir(run_dir)
        # Under torchrun the ranks of one job share the folder: rank 0 holds the lock for them.
        lock = RunLock(run_dir) if int(os.environ.get("RANK", 0)) == 0 else contextlib.nullcontext()
        with lock:
            if stage in ("bootstrap", "correct", "all"):
                return _run_stage3(stage, cfg, run_dir)
            return _run_stages12(stage, cfg, run_dir)
    except RunDirError as e:
        raise StageError(str(e)) from None


def _run_stages12(
    stage: str, cfg: Any, run_dir: Path, target: bool = True, ranks: _Ranks | None = None
) -> dict:
    """Stage 1, or Stages 1-2, on every rank of a torchrun job: each rank writes its share of the
    shards (shard ``k`` goes to rank ``k % world``) into the one store; rank 0 alone generates a
    missing dataset, writes the stage's config and scores the result."""
    own_pg = False
    if ranks is None:
        from .correct.trainutil import setup_dist

        rank, world, own_pg = setup_dist()
        ranks = _Ranks(rank, world)
    try:
        if ranks.main:
            refer = Refer.from_config(cfg.data)
        ranks.barrier()
        if not ranks.main:
            refer = Refer.from_config(cfg.data)
        run_seg = stage == "select" and _reusable("segment", cfg, run_dir, ranks) is None
        m = _reusable(stage, cfg, run_dir, ranks) if not target else None
        ranks.barrier()  # every rank has decided before any rank writes
        if run_seg:
            _run_segment(refer, cfg, run_dir, ranks)
        if m is not None:
            return m
        run = _run_segment if stage == "segment" else _run_select
        return run(refer, cfg, run_dir, ranks)
    except DatasetError as e:
        raise StageError(f"dataset: {e}") from None
    except StoreError as e:
        raise StageError(f"pseudo-label store: {e}") from None
    finally:
        if own_pg:
            from .correct.trainutil import cleanup_dist

            cleanup_dist(own_pg)


def _reusable(stage: str, cfg: Any, run_dir: Path, ranks: _Ranks) -> dict | None:
    """A stage's metrics when its outputs are complete and made with this run's settings.

    ``None`` when they are missing or incomplete (the stage runs or resumes), or when the settings
    differ and ``train.resume`` is off (the stage is redone). Settings that differ with resume on
    are a :class:`RunDirError`.
    """
    from .config import config_to_dict

    d = run_dir / stage
    try:
        check_stage_config(d, config_to_dict(cfg), stage)
    except RunDirError:
        if cfg.train.resume:
            raise
        return None
    if not store_complete(d) or Store(d).verify():
        print(
            f"sssc-train: the {stage} output in {d} is missing or incomplete; "
            f"running --stage {stage} first"
        )
        return None
    try:
        return read_json(d / "metrics.json", "metrics")
    except RunDirError:
        print(
            f"sssc-train: {d / 'metrics.json'} is missing or unreadable; evaluating {stage} again"
        )
        return None


# ---------------------------------------------------------------------------------- the stages


class _Log:
    """Lines to ``<stage>/log.txt`` and to stdout."""

    def __init__(self, path: Path, ranks: _Ranks | None = None):
        self.path, self.ranks = path, ranks or _Ranks()

    def __call__(self, msg: str, echo: bool = True) -> None:
        if self.ranks.world > 1:
            msg = f"[rank {self.ranks.rank}/{self.ranks.world}] {msg}"
        with open(self.path, "a") as f:  # one short line per append: ranks do not interleave
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")
        if echo and self.ranks.main:
            print(msg)


def _prepare(stage: str, cfg: Any, run_dir: Path, ranks: _Ranks) -> tuple[Path, _Log, bool]:
    """The stage folder, its log and whether it starts from scratch; its config.yaml written.

    From scratch when ``train.resume`` is off: sssc's own outputs there are removed first, so a
    kill before the new ones are complete can never leave an old result beside the new config.
    """
    from .config import config_to_dict

    d = run_dir / stage
    cd = config_to_dict(cfg)
    fresh = not cfg.train.resume
    if not fresh:
        check_stage_config(d, cd, stage)
    if ranks.main:
        if fresh and d.exists():
            clear_outputs(d)  # store.json too; the shards are rewritten (write_store(fresh=))
        write_stage_config(d, cd)
    ranks.barrier()
    return d, _Log(d / "log.txt", ranks), fresh


def _data_desc(cfg: Any) -> dict:
    """What identifies the dataset, so a store made on another one is not reused."""
    d = {"dataset": cfg.data.dataset, "split_by": cfg.data.split_by}
    if cfg.data.dataset == "synthetic":
        s = cfg.data.synth
        d["synth"] = {"num_images": s.num_images, "image_size": s.image_size, "seed": s.seed}
    return d


def _stage_images(refer: Refer, cfg: Any) -> tuple[list[str], list[int]]:
    splits = list(dict.fromkeys([cfg.data.train_split, cfg.data.eval_split]))
    ids = sorted({i for s in splits for i in refer.split_image_ids(s)})
    return splits, ids


def _write(
    stage: str,
    d: Path,
    log: _Log,
    kind: str,
    producer: dict,
    ids: list[int],
    make,
    fresh: bool,
    ranks: _Ranks,
) -> None:
    from tqdm import tqdm

    t0 = time.perf_counter()
    mine = sum(
        min(SHARD_SIZE, len(ids) - k * SHARD_SIZE)
        for k in range(ranks.rank, -(-len(ids) // SHARD_SIZE), ranks.world)
    )
    with tqdm(
        total=mine,
        disable=not ranks.main,
        unit="img",
        desc=f"{stage} ({producer['name']})",
        file=sys.stderr,
        dynamic_ncols=True,
    ) as bar:
        rep = write_store(
            d,
            kind,
            producer,
            ids,
            make,
            shard_size=SHARD_SIZE,
            rank=ranks.rank,
            world_size=ranks.world,
            progress=bar.update,
            log=log,
            fresh=fresh,
        )
    ranks.barrier()  # every rank's shards are in place
    dt = time.perf_counter() - t0
    done = sum(min(SHARD_SIZE, len(ids) - k * SHARD_SIZE) for k in rep.written)
    log(
        f"{stage}: {len(rep.written)} shard(s) written ({done} images, "
        f"{done / max(dt, 1e-9):.0f} img/s), {len(rep.skipped)} already done, "
        f"{len(rep.redone)} redone"
    )


def _made_here(stage: str, cfg: Any, run_dir: Path) -> bool:
    """Whether ``run_dir/stage`` holds a complete store made with this run's settings, read
    without writing or validating the shards: a later stage then reuses it and needs none of the
    files that made it."""
    from .config import config_to_dict

    d = run_dir / stage
    if not store_complete(d):
        return False
    try:
        check_stage_config(d, config_to_dict(cfg), stage)
    except RunDirError:
        return False
    return True


def _check_model_weights(cfg: Any, stage: str, run_dir: Path) -> None:
    """Every file a run of ``stage`` needs and cannot make (the models backends' weights, Stage 1's
    spaCy model and NLTK data, Stage 3's initial weights), checked before any stage does any
    work: one error names them all, so that one round of downloads sets a run up.

    An upstream stage whose store in ``run_dir`` is complete and made with these settings is
    reused, so its files are not asked for: Stage 3 can train where GroundingDINO, SAM and spaCy
    are not installed, on a run folder whose Stages 1-2 ran elsewhere. (A store that turns out
    damaged when it is read is redone, and the models it needs are then loaded and checked.)
    """
    from .pretrained import problems_message

    problems: list[str] = []
    # Every stage reads Stage 1's output; Stage 2's is read by the training stages.
    need_segment = stage == "segment" or not _made_here("segment", cfg, run_dir)
    need_select = stage == "select" or (
        stage != "segment" and not _made_here("select", cfg, run_dir)
    )
    if need_segment and cfg.segment.backend == "models":
        from .segment.nouns import NltkNounPhrases, NounError, spacy_model_problem
        from .segment.runner import segment_weight_problems

        m = cfg.segment.models
        problems += segment_weight_problems(m)
        if m.nouns == "spacy":
            if spacy := spacy_model_problem(m.spacy_model):
                problems.append(spacy)
            if m.noun_fallback == "nltk":
                try:
                    NltkNounPhrases(m.nltk_data)  # its data, which a run reads mid-stage
                except NounError as e:
                    problems.append(str(e))
    if need_select and cfg.select.backend == "models":
        from .select.runner import select_weight_problems

        problems += select_weight_problems(cfg.select.models)
    if stage in ("bootstrap", "correct", "all"):
        from .correct.phase import init_weight_problems

        problems += init_weight_problems(cfg.train)
    if problems:
        raise StageError(problems_message(problems, f"--stage {stage} can start"))


# The packages whose code makes a models-backend stage's outputs: each session logs their
# versions, so that a store written across sessions shows whether they changed in between.
_LIBRARIES = {
    "segment": (
        "torch",
        "torchvision",
        "open_clip_torch",
        "groundingdino-py",
        "segment-anything",
        "transformers",
        "spacy",
        "nltk",
    ),
    "select": ("torch", "torchvision", "open_clip_torch", "pillow"),
}


def library_versions(names: tuple[str, ...]) -> str:
    """``"torch 2.14.1, nltk (not installed), ..."``: the installed distributions' versions."""
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} (not installed)")
    return ", ".join(out)


def _models_error(stage: str, e: Exception) -> StageError:
    return StageError(f"{stage}.backend=models cannot start: {e}")


def _run_segment(refer: Refer, cfg: Any, run_dir: Path, ranks: _Ranks) -> dict:
    from .segment.simulated import SimulatedSegmenter

    splits, ids = _stage_images(refer, cfg)
    if cfg.segment.backend == "models" and cfg.segment.models.image_orientation == "exif":
        _check_turned(refer, ids, ranks)
    d, log, fresh = _prepare("segment", cfg, run_dir, ranks)
    if cfg.segment.backend == "models":
        from .segment.nouns import NounError
        from .segment.runner import ModelsSegmenter

        try:
            seg = ModelsSegmenter(
                refer,
                cfg.segment.models,
                cfg.data.class_names,
                splits,
                _data_desc(cfg),
                ranks.device(cfg),
            )
        except (NounError, ImportError, OSError, ValueError) as e:
            raise _models_error("segment", e) from e
        parser = getattr(getattr(seg.nouns, "nlp", None), "meta", {})
        log(
            f"segment: libraries: {library_versions(_LIBRARIES['segment'])}"
            + (f"; spaCy pipeline {parser.get('name')} {parser.get('version')}" if parser else ""),
            echo=False,
        )
    else:
        seg = SimulatedSegmenter(refer, cfg.segment.simulate, splits, _data_desc(cfg))
    log(
        f"segment: {seg.producer['name']} Stage 1 on {cfg.data.dataset} {'+'.join(splits)}: "
        f"{len(ids)} images -> {d}"
    )
    _write("segment", d, log, "S1", seg.producer, ids, seg, fresh, ranks)
    if seg.counts:
        # With real models these are failures to look at (images without detection, ...).
        log(
            f"segment: this session's counts: {dict(seg.counts)}",
            echo=seg.producer["name"] != "simulated",
        )
    return _finish("segment", refer, cfg, run_dir, log, ranks)


def _check_turned(refer: Refer, ids: list[int], ranks: _Ranks) -> None:
    """``segment.models.image_orientation: exif`` refuses, before Stage 1 writes anything, images
    that their EXIF orientation tag turns to another shape (README row 42)."""
    from .segment.runner import turned_images

    bad = turned_images(refer, ids, progress=ranks.main)
    if bad:
        info = refer.images
        eg = "; ".join(
            f"image {i} ({refer.image_path(i).name}, {info[i].height}x{info[i].width}, tag {t})"
            for i, t in bad[:3]
        )
        raise StageError(
            f"segment.models.image_orientation=exif: {len(bad)} of {len(ids)} images turn to "
            f"another shape under their EXIF orientation tag, e.g. {eg}. The official Stage 1 "
            "(cv2.imread) segments them turned and stores masks of the turned shape, which its "
            "Stage 2 cannot composite with the stored image (cv2.bitwise_and refuses the size "
            "once 2 or more candidates include one of 500 px or more); sssc does not reproduce "
            "that. Set segment.models.image_orientation=stored to read every image as stored "
            "(README row 42)"
        )


def _run_select(refer: Refer, cfg: Any, run_dir: Path, ranks: _Ranks) -> dict:
    from .select.simulated import SimulatedSelector

    s1 = Store(run_dir / "segment", kind="S1", pools=cfg.select.candidates)
    d, log, fresh = _prepare("select", cfg, run_dir, ranks)
    if cfg.select.backend == "models":
        from .select.runner import ModelsSelector

        splits, _ = _stage_images(refer, cfg)
        try:
            sel = ModelsSelector(
                refer, cfg.select.models, s1, splits, SHARD_SIZE, ranks.device(cfg)
            )
        except (ImportError, OSError, ValueError) as e:
            raise _models_error("select", e) from e
        make = sel
        log(f"select: libraries: {library_versions(_LIBRARIES['select'])}", echo=False)
    else:
        sel = SimulatedSelector(refer, cfg.select.simulate, s1)
        make = sel
    name = sel.producer["name"]
    log(f"select: {name} Stage 2 on {len(s1)} images of {run_dir / 'segment'} -> {d}")
    _write("select", d, log, "S2", sel.producer, s1.image_ids(), make, fresh, ranks)
    if sel.counts:
        log(f"select: this session's counts: {dict(sel.counts)}", echo=name != "simulated")
    return _finish("select", refer, cfg, run_dir, log, ranks)


def _finish(stage: str, refer: Refer, cfg: Any, run_dir: Path, log: _Log, ranks: _Ranks) -> dict:
    path = run_dir / stage / "metrics.json"
    if not ranks.main:  # rank 0 scores the store
        ranks.barrier()
        return read_json(path, "metrics")
    m = evaluate_stage(stage, cfg, run_dir, refer=refer)
    atomic_write_text(path, json.dumps(m, indent=1) + "\n")
    rows = {}
    seg_metrics = run_dir / "segment" / "metrics.json"
    if stage == "select" and seg_metrics.exists():
        rows["S1 oracle"] = read_json(seg_metrics, "metrics")
    rows["S1 oracle" if stage == "segment" else "S+S"] = m
    name = m["producer"]["name"]
    if oracle_derived(m["producer"]):
        name = "simulated, oracle-derived"
    rows = {f"{k} ({name})": v for k, v in rows.items()}
    log(
        f"{stage}: {cfg.data.dataset} {m['split']} at resolution {m['resolution']}, "
        f"{m['num_expressions']} expressions; metrics in {path}\n" + format_table(rows)
    )
    ranks.barrier()
    return m


# ---------------------------------------------------------------------------------- Stage 3


def _run_stage3(stage: str, cfg: Any, run_dir: Path) -> dict:
    """``bootstrap``, or ``correct``/``all``: bootstrap, correct (and ``+epochs``), then a table."""
    from .correct.train import TrainError, train_phase
    from .correct.trainutil import (
        CheckpointWriteError,
        Interrupted,
        cleanup_dist,
        graceful_stop,
        setup_dist,
        stop_agreed,
        stop_signal,
    )

    # Under torchrun every rank writes its share of the missing Stage 1-2 shards.
    rank, world, own_pg = setup_dist()
    _run_stages12("select", cfg, run_dir, target=False, ranks=_Ranks(rank, world))
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    phases = ["bootstrap"]
    if stage != "bootstrap":
        phases += ["correct"] + (["plus_epochs"] if cfg.train.plus_epochs else [])

    def check_stop(before: str) -> None:  # a signal arrived as the previous phase ended
        if signum := stop_agreed(world, _Ranks(rank, world).device(cfg)):
            raise Interrupted(
                f"stopped by {signal.Signals(signum).name} before the {before} phase; the same "
                "command goes on from there",
                signum,
            )

    try:
        refer = Refer.from_config(cfg.data)
        with graceful_stop():  # SIGINT/SIGTERM: each phase stops after a step, with a checkpoint
            out = {"bootstrap": train_phase("bootstrap", cfg, run_dir, refer)}
            later, beside = phases[1:], None
            if later:
                check_stop(later[0])
            if "plus_epochs" in later and _phases_in_parallel(cfg, world):
                later.remove("plus_epochs")
                beside = _PhaseProcess("plus_epochs", cfg, run_dir)
            try:
                for i, ph in enumerate(later):
                    if i:  # the first was checked before +epochs started
                        check_stop(ph)
                    out[ph] = train_phase(ph, cfg, run_dir, refer)
            except Interrupted:
                if beside is not None:  # it stops after its step too, with a checkpoint
                    beside.interrupt()
                raise
            except BaseException:
                if beside is not None:  # it resumes from its checkpoint on the rerun
                    beside.stop()
                raise
            if beside is not None:
                if stop_signal():  # a signal to this process alone, as its phases ended
                    beside.interrupt()
                out["plus_epochs"] = beside.join()
    except (TrainError, CheckpointWriteError, FileNotFoundError, ValueError) as e:
        raise StageError(f"--stage {stage}: {e}") from None
    except DatasetError as e:
        raise StageError(f"dataset: {e}") from None
    except StoreError as e:
        raise StageError(f"pseudo-label store: {e}") from None
    finally:
        cleanup_dist(own_pg)
    if rank == 0:
        print(stage3_table(run_dir, cfg))
    return out["bootstrap" if stage == "bootstrap" else "correct"]


def _phases_in_parallel(cfg: Any, world: int) -> bool:
    """``train.parallel_phases`` applies: one process on the CPU (a GPU or a DDP job runs the
    phases one after the other)."""
    return cfg.train.parallel_phases and world == 1 and resolve_device(cfg.device) == "cpu"


class _PhaseProcess:
    """One training phase in a child process (``train.parallel_phases``).

    The child trains exactly as the parent would (``train_phase`` seeds everything itself and
    each process runs on ``train.threads`` threads), writes its console output to
    ``<run>/<phase>/console.log`` and dies with the parent (``PR_SET_PDEATHSIG``), so a killed
    run leaves no orphan behind and a rerun resumes both phases from their checkpoints.
    """

    def __init__(self, phase: str, cfg: Any, run_dir: Path):
        import multiprocessing

        self.phase, self.log = phase, run_dir / phase / "console.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        ctx = multiprocessing.get_context("spawn")  # no torch or OpenMP state forked mid-flight
        self.proc = ctx.Process(
            target=_phase_child,
            args=(phase, cfg, str(run_dir), str(self.log), os.getpid()),
            name=f"sssc-{phase}",
        )
        self.proc.start()
        print(f"{phase}: training beside correct in process {self.proc.pid}; output in {self.log}")

    def stop(self) -> None:
        """End the phase now (the parent failed)."""
        self.proc.kill()
        self.proc.join()

    def interrupt(self) -> None:
        """Ask the phase to stop after its step, with a checkpoint (SIGTERM), and wait for it."""
        if self.proc.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.join()

    def join(self) -> dict:
        """Wait for the phase: its ``metrics.json`` object, or its error (the end of its log).

        Raises:
            Interrupted: a signal stopped it after a checkpoint (exit code ``128 + signum``).
            TrainError: it failed.
        """
        self.proc.join()
        if self.proc.exitcode == 0:
            return read_json(self.log.with_name("metrics.json"), "metrics")
        from .correct.train import TrainError
        from .correct.trainutil import Interrupted

        code = self.proc.exitcode
        signum = -code if code < 0 else code - 128
        if signum in (signal.SIGINT, signal.SIGTERM):
            saved = "its state saved" if code > 0 else "before it could save its state"
            raise Interrupted(
                f"{self.phase}: stopped by {signal.Signals(signum).name} in its process, {saved}; "
                f"the same command resumes it (its output: {self.log})",
                signum,
            )

        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        tail = "\n".join(text.replace("\r", "\n").splitlines()[-6:])  # progress bars use \r
        raise TrainError(
            f"{self.phase}: its process ended with exit code {self.proc.exitcode}; the end of "
            f"{self.log}:\n{tail}"
        )


def _phase_child(phase: str, cfg: Any, run_dir: str, log: str, parent: int) -> None:
    import ctypes
    import traceback

    # Ctrl-C reaches the whole process group: until its own handler is in place (graceful_stop),
    # this process leaves it to the parent, which stops it with SIGTERM after its own stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):  # Linux: die when the parent does
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    code = 0
    with open(log, "a", buffering=1) as f:
        os.dup2(f.fileno(), 1), os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        try:
            from .correct.train import TrainError, train_phase
            from .correct.trainutil import CheckpointWriteError, Interrupted, graceful_stop

            with graceful_stop():
                train_phase(phase, cfg, run_dir)
        except Interrupted as e:
            print(e)
            code = 128 + e.signum
        except KeyboardInterrupt:  # a second Ctrl-C
            print(f"{phase}: stopped at once by a second SIGINT; its last checkpoint stays")
            code = 128 + signal.SIGINT
        except (TrainError, CheckpointWriteError, FileNotFoundError, ValueError) as e:
            print(f"{phase}: {e}")  # the last lines of the log, which the parent reports
            code = 2
        except BaseException:  # anything else: its traceback into the log, while it is open
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__  # fds 1 and 2: the log
    if code:
        raise SystemExit(code)

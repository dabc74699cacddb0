"""``sssc eval``: score a run's S1 oracle, its S2 choice, or any LAVT checkpoint against the GT.

    sssc eval --run runs/default --stage select
    sssc eval --run runs/default --stage segment --split test --set eval.resolution=original
    sssc eval --run runs/refcoco --stage segment --pools painted --background largest
    sssc eval --run runs/refcoco --stage select --split val --scoring official
    sssc eval --checkpoint model_best_refcoco.pth --config refcoco --split val testA testB \
        --set train.bert_weights=weights/bert-base-uncased --set device=cuda

For a stage, the config defaults to the one the stage ran with (``<run>/<stage>/config.yaml``),
and the result is written as JSON (the ``metrics.json`` schema; default
``<run>/<stage>/eval_<split>.json``). ``--pools painted`` scores the S1 oracle over the pools as
the official code reads them back (``--background``: ``minimum`` as Stage 2 reads them,
``largest`` as Stage 3 does; default file ``eval_<split>_painted-<background>.json``).
``--scoring official`` scores a store as the official ``test_unsupervised_masks_dataset.py``
does, the paper's S+S and oracle figures: per ref, at each image's own size (suffix
``_official``).

For a checkpoint (sssc-train's ``checkpoint.pt`` or a LAVT / S+S+C release as published), the
config names the dataset, the device and, for published files, the BERT folder
(``train.bert_weights``); each split's ``metrics.json`` goes to ``<out>/<split>/metrics.json``
(default ``<out>``: ``<checkpoint folder>/eval_<checkpoint name>``).
Every result is printed as a table: mIoU, oIoU, prec@0.5..0.9, PointM, PointIt.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..rundir import add_config_args
from .metrics import evaluate_masks, format_table

__all__ = ["add_eval_command", "evaluate_masks", "eval_main"]


def add_eval_command(subparsers, checkpoint_main=None) -> None:
    """Register ``sssc eval`` on an ``argparse`` subparsers object.

    Scoring a model (``--checkpoint``) needs the model code, which :mod:`sssc.eval` never imports:
    the caller passes its handler (:func:`sssc.inference.eval_checkpoint_main`).
    """
    p = subparsers.add_parser(
        "eval",
        help="score a run's S1 (oracle) or S2, or a checkpoint, against the GT",
        description="Score a run's Stage 1 oracle (--stage segment) or Stage 2 choice "
        "(--stage select) against the GT: mIoU, oIoU, prec@0.5..0.9, PointM, PointIt.",
    )
    p.add_argument("--run", help="run directory (as given to sssc-train --run), with --stage")
    p.add_argument("--stage", choices=("segment", "select"), help="the store to score")
    p.add_argument(
        "--checkpoint",
        help="a model to score instead: <run>/<phase>/checkpoint.pt or a LAVT / S+S+C release",
    )
    add_config_args(
        p,
        "YAML config or embedded name (default: <run>/<stage>/config.yaml; for a checkpoint, "
        "the embedded synthetic dataset)",
        "override a config key, e.g. eval.resolution=original",
    )
    p.add_argument(
        "--pools",
        choices=("whole", "painted"),
        default="whole",
        help="--stage segment: the oracle over Stage 1's whole masks (default) or the painted "
        "pools the official code reads back (select.candidates: painted)",
    )
    p.add_argument(
        "--background",
        choices=("minimum", "largest"),
        default="minimum",
        help="with --pools painted: the region dropped, as Stage 2 (minimum) or Stage 3 "
        "(largest, train.label_background) reads a label image",
    )
    p.add_argument(
        "--scoring",
        choices=("lavt", "official"),
        default="lavt",
        help="a store: lavt (per expression at eval.resolution, as a model is scored) or "
        "official (per ref at each image's own size, as the official "
        "test_unsupervised_masks_dataset.py, which gave the paper's S+S figures)",
    )
    p.add_argument("--model", help="model config of a published checkpoint (default: lavt-base)")
    p.add_argument("--split", nargs="+", help="splits to score (default: data.eval_split)")
    p.add_argument(
        "--out",
        help="JSON output (a stage; default <run>/<stage>/eval_<split>.json) or folder (a "
        "checkpoint; default <checkpoint folder>/eval_<checkpoint name>)",
    )
    p.set_defaults(func=eval_main, checkpoint_main=checkpoint_main)


def eval_main(args: argparse.Namespace) -> int:
    if args.checkpoint:
        if args.run or args.stage:
            return _usage("give either --checkpoint or --run with --stage, not both")
        if args.checkpoint_main is None:
            return _usage("--checkpoint needs the model code (run `sssc eval`, not this parser)")
        return args.checkpoint_main(args)
    if not (args.run and args.stage):
        return _usage("give --run and --stage (a store), or --checkpoint (a model)")
    if (args.pools, args.background) != ("whole", "minimum") and args.stage != "segment":
        return _usage(
            "--pools and --background choose the pools of the S1 oracle (--stage segment)"
        )
    if args.pools == "whole" and args.background != "minimum":
        return _usage("--background applies to --pools painted")
    from ..config import ConfigError
    from ..data.refer import DatasetError, Refer
    from ..rundir import load_run_config, missing_store
    from ..store import StoreError
    from .stores import evaluate_stage

    run = Path(args.run)
    if problem := missing_store(run, args.stage):  # before the config and the dataset
        return _usage(problem)
    try:
        cfg = load_run_config(run, args.stage, args.config, args.set)
        splits = args.split or [cfg.data.eval_split]
        refer = Refer.from_config(cfg.data, generate=False)
        view = {"pools": args.pools, "background": args.background, "scoring": args.scoring}
        results = [
            evaluate_stage(args.stage, cfg, run, split=s, refer=refer, **view) for s in splits
        ]
    except (ConfigError, DatasetError, StoreError) as e:
        print(f"sssc eval: {e}", file=sys.stderr)
        return 2
    name = "S1 oracle" if args.stage == "segment" else "S+S"
    suffix = f"_painted-{args.background}" if args.pools == "painted" else ""
    name += ", painted" if suffix else ""
    if args.scoring == "official":
        suffix += "_official"
        name += ", per ref"
    for m in results:
        if args.out and len(results) == 1:
            out = Path(args.out)
        elif args.out:
            out = Path(args.out).with_name(f"{Path(args.out).stem}_{m['split']}.json")
        else:
            out = run / args.stage / f"eval_{m['split']}{suffix}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(m, indent=1) + "\n")
        print(
            f"{m['what']} on {m['split']} at resolution {m['resolution']}; producer "
            f"{m['producer'].get('name')}; written to {out}"
        )
        print(format_table({f"{name} ({m['producer'].get('name')})": m}))
    return 0


def _usage(message: str) -> int:
    print(f"sssc eval: {message}", file=sys.stderr)
    return 2

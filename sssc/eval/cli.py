"""``sssc eval``: score a run's Stage 1 oracle or Stage 2 choice against the GT.

    sssc eval --run runs/default --stage select
    sssc eval --run runs/default --stage segment --split test --set eval.resolution=original

The config defaults to the one the stage ran with (``<run>/<stage>/config.yaml``). The result is
written as JSON (the ``metrics.json`` schema; default ``<run>/<stage>/eval_<split>.json``) and
printed as a table. :func:`evaluate_masks` scores any predictions (a checkpoint's, later).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .metrics import evaluate_masks, format_table

__all__ = ["add_eval_command", "evaluate_masks", "eval_main"]


def add_eval_command(subparsers) -> None:
    """Register ``sssc eval`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "eval",
        help="score S1 (oracle) or S2 of a run against the GT",
        description="Score a run's Stage 1 oracle (--stage segment) or Stage 2 choice "
        "(--stage select) against the GT: mIoU, oIoU, prec@0.5..0.9, PointM, PointIt.",
    )
    p.add_argument("--run", required=True, help="run directory (as given to sssc-train --run)")
    p.add_argument("--stage", required=True, choices=("segment", "select"))
    p.add_argument("--config", help="YAML config (default: <run>/<stage>/config.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. eval.resolution=original",
    )
    p.add_argument("--split", help="split to score (default: data.eval_split)")
    p.add_argument("--out", help="JSON output (default: <run>/<stage>/eval_<split>.json)")
    p.set_defaults(func=eval_main)


def eval_main(args: argparse.Namespace) -> int:
    from ..config import ConfigError, load_config
    from ..data.refer import DatasetError
    from ..data.store import StoreError
    from ..stages import evaluate_stage

    run = Path(args.run)
    config = args.config
    snapshot = run / args.stage / "config.yaml"
    if config is None and snapshot.is_file():
        config = str(snapshot)
    try:
        cfg = load_config(config, args.set)
        m = evaluate_stage(args.stage, cfg, run, split=args.split)
    except (ConfigError, DatasetError, StoreError) as e:
        print(f"sssc eval: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else run / args.stage / f"eval_{m['split']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(m, indent=1) + "\n")
    name = "S1 oracle" if args.stage == "segment" else "S+S"
    print(
        f"{m['what']} on {m['split']} at resolution {m['resolution']}; producer "
        f"{m['producer'].get('name')}; written to {out}"
    )
    print(format_table({f"{name} ({m['producer'].get('name')})": m}))
    return 0

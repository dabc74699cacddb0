"""Command-line entry points: ``sssc-train`` (the stages) and ``sssc`` (data, eval, viz).

Each subcommand lives beside the code it drives and registers itself here:
``sssc.data.cli`` (``sssc data ...``), ``sssc.eval.cli`` (``sssc eval``) and ``sssc.stages``
(``sssc-train --stage ...``).
"""

from __future__ import annotations

import argparse
import sys

STAGES = ("segment", "select", "bootstrap", "correct", "all")


def _train_parser() -> argparse.ArgumentParser:
    from .rundir import add_config_args

    p = argparse.ArgumentParser(
        prog="sssc-train",
        description="Run one stage of Segment, Select, Correct.",
        epilog="A rerun of the same command resumes where a run stopped. In training, Ctrl-C or "
        "SIGTERM stops after the step in progress with a checkpoint (exit 130 or 143); a second "
        "Ctrl-C stops at once.",
    )
    p.add_argument("--stage", choices=STAGES, required=True)
    add_config_args(p, "YAML config; default: the embedded synthetic dataset on CPU")
    p.add_argument(
        "--run-dir",
        "--run",
        dest="run",
        default="runs/default",
        help="run directory (default: runs/default); under torchrun write --run-dir, as torchrun "
        "takes --run for its own --run-path",
    )
    resume = p.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=None,
        help="continue every stage from what the run folder holds (the default, train.resume)",
    )
    resume.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="redo the stage (and any whose settings differ) from scratch, overwriting sssc's "
        "outputs in the run folder",
    )
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``sssc-train``: parse, load the config, run the stage (and the missing ones before it)."""
    args = _train_parser().parse_args(argv)
    from .config import ConfigError, load_config
    from .rundir import Interrupted
    from .stages import StageError, run_stage

    try:
        resume = [] if args.resume is None else [f"train.resume={str(args.resume).lower()}"]
        cfg = load_config(args.config, args.set + resume)
        run_stage(args.stage, cfg, args.run)
    except (ConfigError, StageError) as e:
        print(f"sssc-train: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:  # the state is saved: the same command resumes
        print(f"sssc-train: {e}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside training
        print(
            "sssc-train: stopped at once (Ctrl-C); the same command resumes from the last "
            "checkpoint and the finished shards",
            file=sys.stderr,
        )
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    """``sssc``: data preparation and checks, evaluation."""
    from .data.cli import add_data_commands
    from .eval.cli import add_eval_command
    from .inference import add_predict_command, eval_checkpoint_main
    from .viz import add_viz_command

    p = argparse.ArgumentParser(prog="sssc", description="sssc tools: data, eval, predict, viz.")
    sub = p.add_subparsers(dest="cmd", required=True)
    add_data_commands(sub)
    add_eval_command(sub, checkpoint_main=eval_checkpoint_main)
    add_predict_command(sub)
    add_viz_command(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)

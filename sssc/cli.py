"""Command-line entry points: ``sssc-train`` and ``sssc``."""

from __future__ import annotations

import argparse
import sys

STAGES = ("segment", "select", "bootstrap", "correct", "all")


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sssc-train", description="Run one stage of Segment, Select, Correct.")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--config", help="YAML config; default: the embedded synthetic dataset on CPU")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--run", default="runs/default", help="run directory (default: runs/default)")
    return p


def train_main(argv: list[str] | None = None) -> int:
    args = _train_parser().parse_args(argv)
    print(f"sssc-train: stage {args.stage!r} is not implemented yet", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sssc", description="sssc tools: data, eval, viz.")
    p.add_subparsers(dest="cmd")
    p.parse_args(argv)
    p.print_help()
    return 0

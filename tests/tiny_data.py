"""Config overrides for a tiny synthetic dataset: ``num_images`` with the split sizes back at a
tenth each, since the default config's fixed val and test counts need more images than that."""

from __future__ import annotations

TENTHS = {"val_images": 0, "test_images": 0}  # generate(..., **TENTHS): val and test a tenth each


def synth_sets(num_images: int) -> list[str]:
    """``--set`` values for ``num_images`` synthetic images split 8 : 1 : 1 (train : val : test)."""
    return [
        f"data.synth.num_images={num_images}",
        *(f"data.synth.{k}={v}" for k, v in TENTHS.items()),
    ]


def synth_args(num_images: int) -> list[str]:
    """The same as command-line arguments: ``--set A --set B ...``."""
    return [a for s in synth_sets(num_images) for a in ("--set", s)]

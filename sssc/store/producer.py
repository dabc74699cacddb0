"""The producer interface: what a Stage 1 or Stage 2 labeller gives the store.

Every producer, simulated or model-backed, is one object with three members, so the orchestrator
(:mod:`sssc.stages`) writes any of them with one call to :func:`sssc.store.write_store`:

* ``producer``: a JSON-able dict naming what made the labels (``{"name": "simulated", ...}``,
  ``{"name": "models", ...weights}``). It is stored in the manifest and in every shard, and a
  store made by another producer is refused, never mixed in;
* ``__call__(image_id) -> dict``: the image's record, made with :func:`s1_record` (S1: the
  candidate pool and each object's eligible ids) or :func:`s2_record` (S2: each object's choice);
* ``counts``: a :class:`collections.Counter` of this session's notable events (images without a
  detection, objects without a choice, ...), logged after the stage.

Producers live with their stage (``sssc.segment.simulated``, ``sssc.segment.runner``,
``sssc.select.simulated``, ``sssc.select.runner``) and import nothing from another stage.
"""

from __future__ import annotations

import collections
from typing import Protocol, runtime_checkable

__all__ = ["Producer"]


@runtime_checkable
class Producer(Protocol):
    """A labeller of one stage (see the module docstring)."""

    producer: dict
    counts: collections.Counter

    def __call__(self, image_id: int) -> dict: ...

"""Planning one epoch of ``data.batching: samples`` (a phase plans every epoch at its start).

The embedded default's dataset (seed 0, 2,200 images, generated once into a temporary folder),
4 GPUs, loads of 7 images, 60 expressions a step, one expression per object. Providers:

- ``sssc``: sssc's image order and expression draw (``data.samples_order`` and
  ``data.samples_draw`` both ``sssc``).
- ``official_order``: the official image order (REFER's list, DistributedSampler's permutation),
  sssc's draw.
- ``official``: the official order and draw (the official loader's seeded workers, 8 of them).

``extra_info`` records ms per epoch and, for the official ones, their time over ``sssc``'s in the
same run. Each plan is checked: every step holds 60 expressions, one per object.
"""

from __future__ import annotations

import pytest
from benchutil import mean_seconds

from sssc.correct.data import pack_samples
from sssc.data.refer import Refer
from sssc.data.synthetic import generate

PROVIDERS = {
    "sssc": {"order": "sssc", "draw": "sssc"},
    "official_order": {"order": "official", "draw": "sssc"},
    "official": {"order": "official", "draw": "official"},
}
_MEANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def refer(tmp_path_factory):
    folder = generate(tmp_path_factory.mktemp("plans"), seed=0, num_images=2200, image_size=96)
    return Refer(folder.parent, "synthetic", "synthetic", folder / "images")


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_plan_one_epoch(benchmark, refer, provider):
    benchmark.group = "samples plan, one epoch, 4 GPUs x loads of 7, 60 a step"
    how = PROVIDERS[provider]
    plan = benchmark.pedantic(
        pack_samples,
        args=(refer, "train", 60, 0, 1, 1, 4, 7, None),
        kwargs={"order": how["order"], "draw": how["draw"], "workers": 8},
        rounds=5,
        iterations=1,
    )
    ann = {s.sent_id: r.ann_id for r in refer.split_refs("train") for s in r.sentences}
    assert plan and all(len(step) == 60 for step in plan)
    assert all(len({ann[s] for _, s in step}) == 60 for step in plan)  # one per object
    mean = mean_seconds(benchmark)
    _MEANS[provider] = mean
    benchmark.extra_info.update(provider=provider, ms_per_epoch=1000 * mean, steps=len(plan))
    if provider != "sssc" and "sssc" in _MEANS:
        benchmark.extra_info["time_over_sssc"] = mean / _MEANS["sssc"]

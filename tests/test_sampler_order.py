"""data.samples_order=official: the images in the order the official training loop loads them.

The reference here is the official loop's own machinery, restated from its code (S+S+C's
``UnsupervisedReferDataset`` and REFER's ``getRefIds`` / ``getImgIds`` / ``imgToRefs``) and run on
torch's real ``DistributedSampler`` and ``DataLoader``: which images each GPU loads, in which
order, and which refs it unfolds them into.
"""

import json
import pickle
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sssc.correct.data import pack_samples
from sssc.correct.phase import official_loads
from sssc.data.refer import Refer

# COCO-sized ids: a Python set of them does not iterate in ascending order.
IMAGE_IDS = [
    581929, 9, 393241, 131074, 524311, 262161, 77, 458773, 196625, 327689, 65537, 290,
    550000, 4099, 417017, 35, 300001, 123457, 65541, 200003, 8193, 512, 99991, 262147,
]  # fmt: skip


def _write(root, images=IMAGE_IDS, val_every=5, skip_sentences=(), empty_second=()):
    """A RefCOCO-format dataset: 1-3 refs per image, the refs file in a shuffled order (not by
    ref id), every ``val_every``-th image in val. Refs in ``skip_sentences`` have no expression;
    those in ``empty_second`` have three, the second empty (sssc drops it)."""
    rng = np.random.default_rng(7)
    ds, img_dir = root / "refcoco", root / "images"
    ds.mkdir(parents=True)
    img_dir.mkdir()
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    refs, sent = [], 0
    for k, iid in enumerate(images):
        name = f"COCO_train2014_{iid:012d}.png"
        coco["images"].append({"id": iid, "file_name": name, "height": 16, "width": 16})
        Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(img_dir / name)
        for j in range(int(rng.integers(1, 4))):
            ann = len(coco["annotations"]) + 1000
            x = 1 + 4 * j
            poly = [x, 1, x + 3, 1, x + 3, 12, x, 12]
            coco["annotations"].append(
                {"id": ann, "image_id": iid, "category_id": 1, "segmentation": [poly],
                 "iscrowd": 0}
            )  # fmt: skip
            ref_id = 5000 + 3 * len(refs)
            n = 0 if ref_id in skip_sentences else int(rng.integers(1, 4))
            n = 3 if ref_id in empty_second else n
            sents = [{"sent_id": sent + i, "sent": f"s{sent + i}", "raw": f"s{sent + i}",
                      "tokens": []} for i in range(n)]  # fmt: skip
            if ref_id in empty_second:
                sents[1]["sent"] = sents[1]["raw"] = " "
            sent += n
            split = "val" if k % val_every == val_every - 1 else "train"
            refs.append({"ref_id": ref_id, "ann_id": ann, "image_id": iid, "split": split,
                         "category_id": 1, "sentences": sents,
                         "sent_ids": [x["sent_id"] for x in sents]})  # fmt: skip
    file_order = [refs[i] for i in rng.permutation(len(refs))]
    (ds / "instances.json").write_text(json.dumps(coco))
    (ds / "refs(unc).p").write_bytes(pickle.dumps(file_order, protocol=2))
    return file_order


class _OfficialTrainSet(torch.utils.data.Dataset):
    """The official training set's order, restated: ``getRefIds(split)`` keeps the file's refs
    of the split in file order, ``getImgIds`` is ``list(set(...))`` of their image ids, and an
    item is its image's refs from ``imgToRefs`` (file order) that are in the split."""

    def __init__(self, file_refs, split):
        ref_ids = [r["ref_id"] for r in file_refs if r["split"] == split]
        by_id = {r["ref_id"]: r for r in file_refs}
        self.imgs = list(set([by_id[r]["image_id"] for r in ref_ids]))  # noqa: C403
        img_to_refs = {}
        for r in file_refs:
            img_to_refs[r["image_id"]] = img_to_refs.get(r["image_id"], []) + [r]
        keep = set(ref_ids)
        self.refs = {i: [r for r in img_to_refs[i] if r["ref_id"] in keep] for i in self.imgs}

    def __len__(self):
        return len(self.imgs)

    def __getitem__(self, index):
        return self.imgs[index], [r["ann_id"] for r in self.refs[self.imgs[index]]]


def official_loader(ds, gpus, rank, per_load, epoch, workers=0, collate_fn=list):
    """GPU ``rank``'s loads of ``ds`` as the official loop iterates them: torch's
    DistributedSampler after ``set_epoch(epoch)``, a DataLoader with drop_last=True and
    ``workers`` worker processes, created after ``torch.manual_seed(100)`` (the first line of the
    official ``train_one_epoch``; it fixes the workers' seeds)."""
    sampler = torch.utils.data.distributed.DistributedSampler(
        ds, num_replicas=gpus, rank=rank, shuffle=True
    )
    sampler.set_epoch(epoch)
    context = "fork" if workers else None
    loader = torch.utils.data.DataLoader(
        ds, per_load, sampler=sampler, drop_last=True, collate_fn=collate_fn,
        num_workers=workers, multiprocessing_context=context,
    )  # fmt: skip
    torch.manual_seed(100)
    return iter(loader)


def _official_loads(file_refs, split, gpus, per_load, epoch):
    """Per GPU, its loads of (image id, ann ids)."""
    ds = _OfficialTrainSet(file_refs, split)
    return [list(official_loader(ds, gpus, g, per_load, epoch)) for g in range(gpus)]


@pytest.fixture()
def dataset(tmp_path):
    file_refs = _write(tmp_path)
    return Refer(tmp_path, "refcoco", "unc", tmp_path / "images"), file_refs


def test_refer_image_ids_is_refers_set_order_not_ascending(dataset):
    refer, file_refs = dataset
    order = refer.refer_image_ids("train")
    assert order == _OfficialTrainSet(file_refs, "train").imgs
    assert sorted(order) == refer.split_image_ids("train")
    assert order != sorted(order)  # the fixture's ids make the two orders differ


def test_image_refs_in_file_order(dataset):
    refer, file_refs = dataset
    ds = _OfficialTrainSet(file_refs, "train")
    differ = 0
    for iid in ds.imgs:
        by_file = [r.ann_id for r in refer.image_refs(iid, "train", order="file")]
        assert by_file == ds[ds.imgs.index(iid)][1]
        by_id = [r.ann_id for r in refer.image_refs(iid, "train")]
        assert sorted(by_id) == sorted(by_file)
        differ += by_id != by_file
    assert differ  # some image's refs come in another order in the file
    with pytest.raises(ValueError, match="order must be"):
        refer.image_refs(ds.imgs[0], "train", order="random")


@pytest.mark.parametrize("gpus, per_load, per_gpu", [(4, 2, 2), (3, 1, 3), (2, 3, 4)])
def test_official_order_is_the_distributed_samplers(dataset, gpus, per_load, per_gpu):
    """Each GPU's expressions, cut by pack_samples(order="official"), come from the images the
    official loader gives that GPU, in its order, unfolded into their refs in file order."""
    refer, file_refs = dataset
    sents = {r.ann_id: [s.sent_id for s in r.sentences] for r in refer.split_refs("train")}
    no_target = set(list(sents)[::4])
    for epoch in (0, 1, 2):
        batches = pack_samples(
            refer, "train", gpus * per_gpu, 11, epoch, 0, gpus, per_load,
            lambda a: a not in no_target, order="official",
        )  # fmt: skip
        cuts = []
        for loads in _official_loads(file_refs, "train", gpus, per_load, epoch):
            buffer, steps = [], []
            for load in loads[1:]:  # the official loop skips its first load
                for iid, anns in load:
                    buffer += [(iid, s) for a in anns if a not in no_target for s in sents[a]]
                while len(buffer) > per_gpu:
                    steps.append(buffer[:per_gpu])
                    buffer = buffer[per_gpu:]
            cuts.append(steps)
        steps = min(len(c) for c in cuts)
        assert steps > 0
        assert batches == [[x for c in cuts for x in c[i]] for i in range(steps)]
        # sssc's own order draws another permutation of the same images.
        ours = pack_samples(
            refer, "train", gpus * per_gpu, 11, epoch, 0, gpus, per_load,
            lambda a: a not in no_target,
        )  # fmt: skip
        assert ours != batches


def test_official_order_ignores_the_seed_and_keeps_skipped_refs_images(tmp_path):
    """The sampler's seed is its default 0, whatever sssc's seed; a ref sssc skips (here: no
    expression) still puts its image in REFER's list, so the permutation is over as many
    images as the official one."""
    only = IMAGE_IDS[:8]
    file_refs = _write(tmp_path, images=only, val_every=100, skip_sentences={5000, 5003, 5006})
    refer = Refer(tmp_path, "refcoco", "unc", tmp_path / "images")
    lone = [i for i in only if not refer.image_refs(i, "train")]
    assert lone  # an image whose only ref has no expression
    assert set(refer.refer_image_ids("train")) == set(only)
    assert len(refer.split_image_ids("train")) == len(only) - len(lone)
    a = pack_samples(refer, "train", 2, 0, 3, 1, 2, 1, order="official")
    b = pack_samples(refer, "train", 2, 99, 3, 1, 2, 1, order="official")
    ann_of = {s.sent_id: r.ann_id for r in refer.split_refs("train") for s in r.sentences}
    assert [[ann_of[s] for _, s in x] for x in a] == [[ann_of[s] for _, s in x] for x in b]
    loads = _official_loads(file_refs, "train", 2, 1, 3)
    images = [[iid for load in g for iid, _ in load] for g in loads]
    assert {i for g in images for i in g} == set(only)
    gpu0 = [x[0][0] for x in a]  # step i's first sample: GPU 0's i-th cut (one expression)
    seen = [i for k, i in enumerate(gpu0) if k == 0 or gpu0[k - 1] != i]
    assert seen == [i for i in images[0] if i not in lone][: len(seen)]
    # The official lr horizon counts the loads of that loader, the lone image's included.
    for gpus, per_load in ((1, 1), (1, 4), (3, 2)):
        data = SimpleNamespace(
            train_split="train", samples_gpus=gpus, samples_images_per_load=per_load
        )
        loads = _official_loads(file_refs, "train", gpus, per_load, 0)
        assert official_loads(refer, data) == len(loads[0])
    with pytest.raises(ValueError, match="order must be 'sssc' or 'official'"):
        pack_samples(refer, "train", 2, 0, 0, gpus=2, order="shuffled")


class _OfficialOneSentenceSet(_OfficialTrainSet):
    """The official ``__getitem__`` with ``--one-sentence``: per ref of the image (file order),
    ``np.random.choice`` over its expressions in the file, in whatever process loads the item."""

    def __init__(self, file_refs, split):
        super().__init__(file_refs, split)
        self.sents = {r["ann_id"]: [x["sent_id"] for x in r["sentences"]] for r in file_refs}

    def __getitem__(self, index):
        image_id, anns = super().__getitem__(index)
        return image_id, [
            (a, self.sents[a][np.random.choice(len(self.sents[a]))]) for a in anns if self.sents[a]
        ]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [1, 3])
def test_official_draw_is_the_loader_workers_numpy_draw(tmp_path, workers):
    """data.samples_draw=official: each object's expression is the one the official loader's
    workers draw, run here for real: torch's DataLoader with that many worker processes over the
    official set, iterated after torch.manual_seed(100) as the official loop does at each
    epoch's start; the first load skipped; an expression sssc drops (empty) can be drawn and
    then leaves its object out of that epoch."""
    empty = {5000 + 3 * k for k in range(0, 40, 3)}
    file_refs = _write(tmp_path, empty_second=empty)
    refer = Refer(tmp_path, "refcoco", "unc", tmp_path / "images")
    kept = {s.sent_id for r in refer.split_refs("train") for s in r.sentences}
    ds = _OfficialOneSentenceSet(file_refs, "train")
    gpus, per_load, per_gpu = 2, 2, 2
    lost = 0
    for epoch in (0, 1):
        cuts = []
        for g in range(gpus):
            buffer, steps = [], []
            for k, load in enumerate(official_loader(ds, gpus, g, per_load, epoch, workers)):
                if k == 0:  # log_every(..., skip_first=True)
                    continue
                for image_id, drawn in load:
                    lost += sum(s not in kept for _, s in drawn)
                    buffer += [(image_id, s) for _, s in drawn if s in kept]
                while len(buffer) > per_gpu:
                    steps.append(buffer[:per_gpu])
                    buffer = buffer[per_gpu:]
            cuts.append(steps)
        n = min(len(c) for c in cuts)
        want = [[x for c in cuts for x in c[i]] for i in range(n)]
        got = pack_samples(
            refer, "train", gpus * per_gpu, 5, epoch, 1, gpus, per_load, None, "official",
            draw="official", workers=workers,
        )  # fmt: skip
        assert n > 0 and got == want
        assert got != pack_samples(
            refer, "train", gpus * per_gpu, 5, epoch, 1, gpus, per_load, None, "official",
            workers=workers,
        )  # fmt: skip
    assert lost  # some draw fell on a dropped expression
    with pytest.raises(ValueError, match="one expression per object"):
        pack_samples(refer, "train", 4, 0, 0, 2, 2, 2, None, "official", draw="official")


class _OfficialValSet(torch.utils.data.Dataset):
    """LAVT's ``ReferDataset`` outside eval mode, as the official validation reads it: one item
    per ref of the split (``getRefIds``: file order), each drawing ``np.random.choice`` over its
    expressions in the file."""

    def __init__(self, file_refs, split):
        self.refs = [r for r in file_refs if r["split"] == split and r["sentences"]]

    def __len__(self):
        return len(self.refs)

    def __getitem__(self, index):
        r = self.refs[index]
        return r["ref_id"], r["sentences"][np.random.choice(len(r["sentences"]))]["sent_id"]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers", [1, 3])
def test_official_val_draw_is_the_validation_loaders(tmp_path, workers):
    """train.selection_val=official_draw: the expression each val ref is scored on is the one
    the official validation loader's workers draw, run here for real after an epoch of the
    training loader (the loop's order: torch.manual_seed(100), the training loader's iterator,
    then the validation loader's), the same every epoch."""
    from sssc.correct.data import official_val_draw

    empty = {5000 + 3 * k for k in range(0, 40, 3)}
    file_refs = _write(tmp_path, val_every=2, empty_second=empty)
    refer = Refer(tmp_path, "refcoco", "unc", tmp_path / "images")
    train = _OfficialOneSentenceSet(file_refs, "train")
    val = _OfficialValSet(file_refs, "val")
    kept = {s.sent_id for r in refer.split_refs("val") for s in r.sentences}
    want = []
    for epoch in (0, 1):
        for _ in official_loader(train, 2, 0, 2, epoch, workers):  # seeds, then iterates
            pass
        loader = torch.utils.data.DataLoader(
            val, batch_size=1, num_workers=workers, multiprocessing_context="fork",
            collate_fn=lambda b: b[0],
        )  # fmt: skip
        want.append({ref_id: s if s in kept else None for ref_id, s in loader})
    got = official_val_draw(refer, "val", workers)
    assert want[0] == want[1] == got
    assert any(s is None for s in got.values())  # an empty expression drawn: none scored
    assert got != official_val_draw(refer, "val", workers + 1)

"""Stage 2: the streaming CLIP scorer (reverse-blur prompts, packed encoder batches).

The paper's code scores candidates one at a time: blur the full-resolution image with OpenCV,
composite, PIL-preprocess, one CLIP forward per mask. Here, in the predictor pattern of
segment-anything, every piece of work is done once and in bulk:

* DataLoader workers read the S1 records, decode the images and the candidates' RLE masks
  (the main process never does per-mask Python work);
* :func:`sssc.kernels.reverse_blur` builds all prompts of an image in one pass on the device;
* prompts of many images are packed into encoder batches of ``batch_size`` (one forward per
  batch, whatever the number of candidates per image), so the GPU sees large batches;
* text embeddings are computed once per expression (``sent_id``) and cached;
* results come out image by image, in order, so the stage writes them shard by shard and memory
  stays bounded by one batch plus the DataLoader's prefetch, whatever the dataset size.

Selection (:func:`select_objects`): a candidate's score is the mean (or max) cosine similarity
over the object's expressions, and the choice is the best score. Small candidates follow
``select.models.small_masks``: ``official`` (the published ``vp_and_max_sim_clip_choice``) takes
an object's only candidate whatever its size, otherwise skips candidates under ``min_area`` pixels,
gives ties to the last candidate (``>=``), and leaves the object without a mask when every
candidate is small; ``sssc`` keeps the best small candidate in that case (counted) and gives ties
to the first. ``prompt="red_ellipse"`` draws a red ellipse around the candidate's box instead (the
paper's ablation). ``channel_order="bgr"`` feeds CLIP the image with its channels swapped, as the
official code did (it flips the PIL image to OpenCV's BGR and hands that array back to PIL as
RGB); ``"rgb"`` is correct.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..kernels import reverse_blur

__all__ = [
    "ImageItem",
    "S1Images",
    "StreamingScorer",
    "item_from_arrays",
    "red_ellipse",
    "select_objects",
]


@dataclass
class ImageItem:
    """One image ready to prompt (made in a DataLoader worker).

    Attributes:
        image_id: the image.
        image: uint8 ``[3, H, W]``.
        masks: bool ``[C, H, W]``, the candidates some object may take.
        cand_ids: int ``[C]``, their ids in the S1 pool.
        areas: int ``[C]``, their pixel counts.
        objects: ``(ann_id, eligible candidate ids)`` per object.
    """

    image_id: int
    image: torch.Tensor
    masks: torch.Tensor
    cand_ids: list[int]
    areas: list[int]
    objects: list[tuple[int, tuple[int, ...]]]


class S1Images(torch.utils.data.Dataset):
    """Map-style dataset over image ids of an S1 store: decodes images and candidate masks.

    Args:
        s1_dir: the S1 store directory (each worker opens its own reader).
        image_ids: the images, in order.
        image_paths: image id -> image file.
        pools: how the pools are read (``select.candidates``: ``whole`` or ``painted``).
    """

    def __init__(
        self, s1_dir, image_ids: Sequence[int], image_paths: dict[int, str], pools: str = "whole"
    ):
        self.s1_dir, self.ids, self.paths = str(s1_dir), list(image_ids), image_paths
        self.pools = pools
        self._store = None

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> ImageItem:
        from ..data.images import read_rgb
        from ..store import Store

        if self._store is None:
            self._store = Store(self.s1_dir, kind="S1", pools=self.pools)
        image_id = self.ids[i]
        rec = self._store.get(image_id)
        img = read_rgb(self.paths[image_id])
        needed = sorted({c for o in rec.objects for c in o.eligible})
        h, w = img.shape[:2]
        masks = np.zeros((len(needed), h, w), dtype=bool)
        for j, c in enumerate(needed):
            masks[j] = rec.candidate(c).decode()
        return ImageItem(
            image_id,
            torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
            torch.from_numpy(masks),
            needed,
            [int(a) for a in masks.reshape(len(needed), h * w).sum(1)],  # h*w: 0 masks too
            [(o.ann_id, tuple(o.eligible)) for o in rec.objects],
        )


def _first(batch):
    return batch[0]


def red_ellipse(
    image: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    thickness: float = 2.0,
) -> torch.Tensor:
    """CLIP inputs with a red ellipse drawn around each mask's box (the paper's ablation).

    The image is preprocessed once (``reverse_blur`` with ``sigma=0`` is exactly CLIP's resize,
    crop and normalization); the ellipse inscribed in each mask's bounding box is drawn at the
    output resolution, ``thickness`` output pixels wide, in normalized pure red.

    Args:
        image: ``[3, H, W]`` uint8 or float in [0, 1].
        masks: ``[C, H, W]`` bool.
        size: output side.
        mean, std: normalization.
        thickness: ring width in output pixels.

    Returns:
        ``[C, 3, size, size]`` float32.
    """
    h, w = image.shape[-2:]
    dev = image.device
    base = reverse_blur(
        image, torch.ones(1, h, w, dtype=torch.bool, device=dev), 0.0, size, "center", mean, std
    )[0]  # [3, S, S]
    # Output pixel -> input coordinates under the short-side resize and center crop.
    # torchvision's Resize(size) + CenterCrop(size), as reverse_blur does.
    new_h, new_w = (int(size * h / w), size) if w <= h else (size, int(size * w / h))
    top, left = round((new_h - size) / 2), round((new_w - size) / 2)
    scale = size / min(h, w)
    coord = torch.arange(size, device=dev, dtype=torch.float32) + 0.5
    ys = ((coord + top) / scale)[:, None]  # [S, 1] input y of each output row
    xs = ((coord + left) / scale)[None, :]
    any_y, any_x = masks.any(dim=2), masks.any(dim=1)  # [C, H], [C, W]
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    big = torch.iinfo(torch.long).max
    y0 = torch.where(any_y, ar_h, big).min(1).values.float()
    y1 = torch.where(any_y, ar_h, -1).max(1).values.float() + 1
    x0 = torch.where(any_x, ar_w, big).min(1).values.float()
    x1 = torch.where(any_x, ar_w, -1).max(1).values.float() + 1
    cy, cx = ((y0 + y1) / 2)[:, None, None], ((x0 + x1) / 2)[:, None, None]
    ry = ((y1 - y0) / 2).clamp_min(0.5)[:, None, None]
    rx = ((x1 - x0) / 2).clamp_min(0.5)[:, None, None]
    r = torch.sqrt(((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2)  # [C, S, S], 1 on the ellipse
    # Distance to the ellipse in output pixels, to first order: |r - 1| * radius * scale.
    dist = (r - 1).abs() * torch.minimum(ry, rx) * scale
    ring = (1 - (dist - thickness / 2).clamp(0, 1)) * masks.flatten(1).any(1)[:, None, None]
    red = (
        torch.tensor([1.0, 0.0, 0.0], device=dev) - torch.tensor(mean, device=dev)
    ) / torch.tensor(std, device=dev)
    return base[None] * (1 - ring[:, None]) + red[None, :, None, None] * ring[:, None]


def select_objects(
    objects: Sequence[tuple[int, Sequence[int]]],
    cand_ids: Sequence[int],
    areas: Sequence[int],
    cand_emb: torch.Tensor,
    text_emb: dict[int, torch.Tensor],
    min_area: int = 500,
    score: str = "mean",
    counts: collections.Counter | None = None,
    small_masks: str = "official",
) -> list[tuple[int, int | None, list[int], list[float]]]:
    """The paper's choice per object, as ``(ann_id, chosen, candidate ids, scores)``.

    Args:
        objects: ``(ann_id, eligible ids)`` per object.
        cand_ids: the ids of the rows of ``cand_emb``; ``areas`` their pixel counts.
        cand_emb: float ``[C, D]`` normalized image embeddings.
        text_emb: ann_id -> float ``[R, D]`` normalized embeddings of its expressions.
        min_area: candidates smaller than this are not chosen (see ``small_masks``).
        score: ``mean`` or ``max`` cosine over the object's expressions.
        counts: incremented with ``no_eligible``, ``all_below_min_area``, ``no_expression``.
        small_masks: ``official`` or ``sssc`` (see the module docstring).
    """
    if small_masks not in ("official", "sssc"):
        raise ValueError(f"small_masks must be 'official' or 'sssc', got {small_masks!r}")
    counts = counts if counts is not None else collections.Counter()
    row = {c: i for i, c in enumerate(cand_ids)}
    out = []
    for ann_id, eligible in objects:
        el = list(eligible)
        t = text_emb.get(ann_id)
        if not el:
            counts["no_eligible"] += 1
            out.append((ann_id, None, [], []))
            continue
        if t is None or len(t) == 0:
            counts["no_expression"] += 1
            out.append((ann_id, None, el, [0.0] * len(el)))
            continue
        sims = cand_emb[[row[c] for c in el]] @ t.T  # [E, R] cosine
        s = sims.mean(1) if score == "mean" else sims.max(1).values
        big = torch.tensor([areas[row[c]] >= min_area for c in el], device=s.device)
        if small_masks == "official" and len(el) == 1:
            k: int | None = 0  # the official code returns a lone candidate unscored
        elif big.any():
            masked = torch.where(big, s, torch.tensor(-torch.inf, device=s.device))
            if small_masks == "official":  # `similarity >= best`: the last of equal maxima
                k = int(len(el) - 1 - torch.flip(masked, (0,)).argmax())
            else:
                k = int(masked.argmax())
        else:
            counts["all_below_min_area"] += 1
            k = None if small_masks == "official" else int(s.argmax())
        out.append((ann_id, None if k is None else el[k], el, s.tolist()))
    return out


class StreamingScorer:
    """Embed the candidates of a stream of images with CLIP, in packed batches.

    Args:
        clip: a :class:`sssc.pretrained.Clip`.
        sigma: reverse-blur sigma in input pixels (the paper: 50).
        prompt: ``reverse_blur`` or ``red_ellipse``.
        batch_size: prompts per encoder forward.
        amp: ``bf16`` | ``fp16`` | ``none``; autocast on CUDA only.
        channel_order: ``rgb`` | ``bgr`` (the official code's swapped channels).
        composite: ``exact`` (each mask composited at full resolution, then resized: the
            official prompt) | ``fast`` (:func:`sssc.kernels.reverse_blur`'s fast backends, an
            approximation at mask edges).
    """

    def __init__(
        self,
        clip,
        sigma: float = 50.0,
        prompt: str = "reverse_blur",
        batch_size: int = 256,
        amp: str = "bf16",
        channel_order: str = "rgb",
        composite: str = "exact",
    ):
        if prompt not in ("reverse_blur", "red_ellipse"):
            raise ValueError(f"prompt must be reverse_blur or red_ellipse, got {prompt!r}")
        if composite not in ("exact", "fast"):
            raise ValueError(f"composite must be exact or fast, got {composite!r}")
        self.composite = composite
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be rgb or bgr, got {channel_order!r}")
        self.channel_order = channel_order
        self.clip, self.sigma, self.prompt = clip, float(sigma), prompt
        self.batch_size, self.amp = int(batch_size), amp
        self._text: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- text side

    def text_embeddings(self, sentences: Iterable[tuple[int, str]]) -> dict[int, torch.Tensor]:
        """Embed expressions not seen yet (once per ``sent_id``); returns the cache."""
        new = [(i, s) for i, s in dict(sentences).items() if i not in self._text]
        if new:
            e = self.clip.encode_text([s for _, s in new])
            for (i, _), row in zip(new, e, strict=True):
                self._text[i] = row
        return self._text

    # ---------------------------------------------------------------------------- image side

    def prompts(self, image: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """All prompts of one image on the device: ``[C, 3, S, S]`` float32."""
        c = self.clip
        if self.channel_order == "bgr":
            # Blur and resize act per channel, so swapping first equals swapping their output;
            # the normalisation then uses RGB statistics on BGR data, as the official code did.
            image = image.flip(0)
        if self.prompt == "red_ellipse":
            return red_ellipse(image, masks, c.image_size, c.mean, c.std)
        backend = "exact" if self.composite == "exact" else "auto"
        return reverse_blur(
            image, masks, self.sigma, c.image_size, "center", c.mean, c.std, backend=backend
        )

    def _autocast(self):
        dev = self.clip.device
        if dev.type == "cuda" and self.amp in ("bf16", "fp16"):
            dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dt)
        return contextlib.nullcontext()

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.clip.encode_image(pixels)

    def embed(self, items: Iterable[ImageItem]) -> Iterator[tuple[ImageItem, torch.Tensor]]:
        """Yield ``(item, embeddings [C, D])`` for each image, in order.

        Prompts of consecutive images are packed into full batches; an image is yielded as soon
        as all its prompts are encoded. At most ``batch_size`` prompts (plus one image's) wait.
        """
        dev = self.clip.device
        pending: collections.deque = collections.deque()  # (item, list of embedding chunks)
        queue: list[torch.Tensor] = []  # prompt chunks waiting for the encoder
        queued = 0
        owners: list[tuple[int, int]] = []  # per queued chunk: (index in pending, rows)
        first = 0  # absolute index of pending[0]

        def flush(all_: bool):
            nonlocal queue, queued, owners
            while queued >= self.batch_size or (all_ and queued):
                take = min(self.batch_size, queued)
                batch, rest, rest_owners, got = [], [], [], 0
                new_owners = []
                for chunk, (who, n) in zip(queue, owners, strict=True):
                    if got >= take:
                        rest.append(chunk)
                        rest_owners.append((who, n))
                        continue
                    k = min(n, take - got)
                    batch.append(chunk[:k])
                    new_owners.append((who, k))
                    if k < n:
                        rest.append(chunk[k:])
                        rest_owners.append((who, n - k))
                    got += k
                emb = self._encode(torch.cat(batch) if len(batch) > 1 else batch[0])
                pos = 0
                for who, k in new_owners:
                    pending[who - first][1].append(emb[pos : pos + k])
                    pos += k
                queue, owners, queued = rest, rest_owners, queued - take

        def ready():
            nonlocal first
            while pending:
                item, chunks = pending[0]
                if sum(len(c) for c in chunks) < len(item.cand_ids):
                    return
                pending.popleft()
                first += 1
                d = self.clip.embed_dim
                yield item, (torch.cat(chunks) if chunks else torch.zeros(0, d, device=dev))

        for item in items:
            idx = first + len(pending)
            pending.append((item, []))
            if item.cand_ids:
                img = item.image.to(dev, non_blocking=True)
                m = item.masks.to(dev, non_blocking=True)
                p = self.prompts(img, m)
                queue.append(p)
                owners.append((idx, len(p)))
                queued += len(p)
                flush(False)
            yield from ready()
        flush(True)
        yield from ready()

    def loader(self, dataset: S1Images, num_workers: int = 2) -> torch.utils.data.DataLoader:
        """A DataLoader yielding :class:`ImageItem` in order (workers decode, main prompts)."""
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=1,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=_first,
            pin_memory=self.clip.device.type == "cuda",
            prefetch_factor=4 if num_workers else None,
            persistent_workers=False,
        )


def item_from_arrays(
    image_id: int,
    image: np.ndarray,
    masks: np.ndarray,
    objects: Sequence[tuple[int, Sequence[int]]],
) -> ImageItem:
    """An :class:`ImageItem` from an RGB ``[H, W, 3]`` image and all pool masks ``[C, H, W]``."""
    needed = sorted({c for _, el in objects for c in el})
    m = masks[needed] if len(needed) else np.zeros((0,) + image.shape[:2], dtype=bool)
    return ImageItem(
        image_id,
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        torch.from_numpy(np.ascontiguousarray(m)),
        needed,
        [int(np.count_nonzero(x)) for x in m],
        [(a, tuple(el)) for a, el in objects],
    )

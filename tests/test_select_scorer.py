"""The streaming scorer against a plain per-mask loop with the same tiny random CLIP."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

pytest.importorskip("open_clip", reason="open_clip is in the select extra")

from tiny_models import register_tiny_clip  # noqa: E402

from sssc.kernels import reverse_blur  # noqa: E402
from sssc.pretrained import (
    WeightsError,  # noqa: E402
    load_clip,  # noqa: E402
)
from sssc.select.scorer import (  # noqa: E402
    StreamingScorer,
    item_from_arrays,
    red_ellipse,
    select_objects,
)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    name = register_tiny_clip(tmp_path_factory.mktemp("clip"))
    return load_clip(name, "random", "cpu", "select.models")


def _images(n: int, seed: int = 0):
    """Random images with blob-like masks of varied counts (0 included) and sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        c = [3, 0, 5, 1, 7][i % 5]
        yy, xx = np.mgrid[0:h, 0:w]
        masks = np.zeros((c, h, w), dtype=bool)
        for k in range(c):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, 20)
            masks[k] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            masks[k, int(min(cy, h - 1)), int(min(cx, w - 1))] = True
        # Two objects per image sharing some candidates; one with none.
        objects = [(100 * i + 1, list(range(0, c, 2))), (100 * i + 2, list(range(c))[1:])]
        out.append(item_from_arrays(i, img, masks, objects))
    return out


@pytest.mark.parametrize(
    "batch_size, composite",
    [(1, "exact"), (4, "exact"), (7, "fast"), (64, "exact"), (64, "fast")],
    ids=lambda v: f"batch{v}" if isinstance(v, int) else v,
)
def test_packed_embeddings_equal_per_mask_loop(clip, batch_size, composite):
    """Packed batches embed what one prompt per forward embeds; ``composite`` picks the prompt
    (``exact``: the reverse_blur reference's math; ``fast``: the fast backend)."""
    items = _images(7)
    scorer = StreamingScorer(clip, sigma=10.0, batch_size=batch_size, composite=composite)
    backend = "reference" if composite == "exact" else "auto"
    got = list(scorer.embed(iter(items)))
    assert [it.image_id for it, _ in got] == [it.image_id for it in items]  # order kept
    for item, emb in got:
        assert emb.shape == (len(item.cand_ids), clip.embed_dim)
        for j in range(len(item.cand_ids)):  # the plain loop: one prompt, one forward
            p = reverse_blur(
                item.image, item.masks[j : j + 1], 10.0, clip.image_size, backend=backend
            )
            ref = clip.encode_image(p)[0].double()
            err = (emb[j].double() - ref).norm() / ref.norm()
            assert err < 1e-5, (item.image_id, j, float(err))


@pytest.mark.parametrize("rule", ["official", "sssc"])
def test_choice_equals_plain_loop(clip, rule):
    """Stage 2's choice (the default exact prompts) against a plain loop over the reference."""
    items = _images(10, seed=1)
    scorer = StreamingScorer(clip, sigma=50.0, batch_size=5)
    texts = {
        a: [f"the thing number {a} {k}" for k in range(3)] for it in items for a, _ in it.objects
    }
    sent = {(a, k): 1000 * a + k for a in texts for k in range(3)}
    cache = scorer.text_embeddings(
        (sent[a, k], s) for a, ss in texts.items() for k, s in enumerate(ss)
    )
    counts = collections.Counter()
    for item, emb in scorer.embed(iter(items)):
        text = {a: torch.stack([cache[sent[a, k]] for k in range(3)]) for a, _ in item.objects}
        got = select_objects(
            item.objects, item.cand_ids, item.areas, emb, text, 100, "mean", counts, rule
        )
        for (ann, eligible), (ann2, chosen, cands, scores) in zip(item.objects, got, strict=True):
            assert ann == ann2 and cands == list(eligible)
            if not eligible:
                assert chosen is None
                continue
            # Plain loop in float64: per candidate, prompt, encode, mean cosine over expressions;
            # the official rule as vp_and_max_sim_clip_choice: a lone candidate is returned,
            # small ones are skipped, `>=` keeps the last maximum, all small gives no mask.
            t = clip.encode_text(texts[ann]).double()
            best, best_s, ref_scores = None, -np.inf, []
            for c in eligible:
                j = item.cand_ids.index(c)
                p = reverse_blur(item.image, item.masks[j : j + 1], 50.0, 32, backend="reference")
                e = clip.encode_image(p)
                s = float((e.double() @ t.T).mean())
                ref_scores.append(s)
                if item.areas[j] >= 100 and (s >= best_s if rule == "official" else s > best_s):
                    best, best_s = c, s
            if rule == "official" and len(eligible) == 1:
                best = eligible[0]
            elif best is None and rule == "sssc":  # all below min_area: the best of all
                best = eligible[int(np.argmax(ref_scores))]
            assert chosen == best
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    assert counts["no_eligible"] > 0 and counts["all_below_min_area"] > 0


def test_select_objects_max_score_and_min_area():
    emb = torch.eye(3)  # candidates 10, 11, 12 point along the axes
    text = {7: torch.tensor([[1.0, 0, 0], [0, 0.6, 0.8]])}
    objs = [(7, (10, 11, 12))]
    mean = select_objects(objs, [10, 11, 12], [600, 600, 600], emb, text, 500, "mean")
    assert mean[0][1] == 10 and mean[0][3] == pytest.approx([0.5, 0.3, 0.4])
    mx = select_objects(objs, [10, 11, 12], [600, 600, 600], emb, text, 500, "max")
    assert mx[0][1] == 10 and mx[0][3] == pytest.approx([1.0, 0.6, 0.8])
    small = select_objects(objs, [10, 11, 12], [10, 600, 600], emb, text, 500, "max")
    assert small[0][1] == 12  # 10 is under min_area


def test_official_small_mask_rules():
    emb = torch.eye(3)
    text = {7: torch.tensor([[0.0, 0.6, 0.6]])}  # candidates 11 and 12 tie
    objs = [(7, (10, 11, 12))]
    ids = [10, 11, 12]
    args = (emb, text, 500, "mean")
    assert select_objects(objs, ids, [600] * 3, *args, small_masks="official")[0][1] == 12
    assert select_objects(objs, ids, [600] * 3, *args, small_masks="sssc")[0][1] == 11
    counts = collections.Counter()
    small = [10, 20, 30]  # every candidate under min_area: officially the object gets none
    assert select_objects(objs, ids, small, *args, counts, "official")[0][1] is None
    assert select_objects(objs, ids, small, *args, counts, "sssc")[0][1] == 11
    assert counts["all_below_min_area"] == 2
    # A lone candidate is the choice whatever its size (the official code returns it unscored).
    lone = select_objects([(7, (10,))], ids, small, *args, small_masks="official")
    assert lone[0][1] == 10


def test_bgr_prompts_are_the_official_channel_swap(clip):
    """channel_order=bgr against the official pipeline: PIL image -> array[:, :, ::-1] (BGR) ->
    OpenCV blur and composite -> Image.fromarray (read as RGB) -> CLIP's resize, crop and RGB
    normalisation."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(3)
    h, w = 60, 80
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]  # red ramp, no blue: order shows
    rgb[..., 1] = rng.integers(0, 60, (h, w))
    mask = np.zeros((h, w), bool)
    mask[10:40, 20:60] = True
    bgr = rgb[:, :, ::-1].copy()
    blurred = cv2.GaussianBlur(bgr, (0, 0), 10.0, borderType=cv2.BORDER_REFLECT_101)
    comp = np.where(mask[..., None], bgr, blurred)
    size = clip.image_size
    short = min(h, w)
    new_h, new_w = round(h * size / short), round(w * size / short)
    im = Image.fromarray(comp).resize((new_w, new_h), Image.BICUBIC)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    want = np.asarray(im, np.float64)[top : top + size, left : left + size] / 255.0
    img = torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    m = torch.from_numpy(mask)[None]
    mean, std = torch.tensor(clip.mean)[:, None, None], torch.tensor(clip.std)[:, None, None]
    for order, ref in (("bgr", want), ("rgb", want[..., ::-1])):
        out = StreamingScorer(clip, sigma=10.0, channel_order=order).prompts(img, m)[0]
        got = (out * std + mean).permute(1, 2, 0).double().numpy()
        assert np.abs(got - ref).mean() < 0.01, order
    bgr_out = StreamingScorer(clip, sigma=10.0, channel_order="bgr").prompts(img, m)[0]
    assert (bgr_out * std + mean)[2].mean() > 0.3  # the red ramp arrives in CLIP's blue channel


def test_red_ellipse_draws_ring_around_box(clip):
    img = torch.full((3, 50, 70), 128, dtype=torch.uint8)
    m = torch.zeros(1, 50, 70, dtype=torch.bool)
    m[0, 10:30, 20:50] = True
    out = red_ellipse(img, m, 32, clip.mean, clip.std, thickness=2.0)
    base = reverse_blur(
        img, torch.ones(1, 50, 70, dtype=torch.bool), 0.0, 32, "center", clip.mean, clip.std
    )
    assert out.shape == (1, 3, 32, 32)
    mean, std = torch.tensor(clip.mean), torch.tensor(clip.std)
    pix = out[0] * std[:, None, None] + mean[:, None, None]  # back to [0, 1]
    # 50x70 -> resize 32x44, crop 6 columns each side; scale 0.64. Box centre (20, 35) maps to
    # output (12.8, 16.4); the ellipse's left end x = 20 px -> 12.8 - 6 = 6.8.
    assert pix[0, 12, 6] > 0.9 and pix[1, 12, 6] < 0.1  # on the ring: red
    torch.testing.assert_close(out[0, :, 12, 16], base[0, :, 12, 16])  # inside: untouched
    torch.testing.assert_close(out[0, :, 0, 0], base[0, :, 0, 0])  # far outside: untouched


def test_missing_clip_weights_name_setting_file_and_source(tmp_path):
    missing = tmp_path / "ViT-L-14-336px.pt"
    with pytest.raises(
        WeightsError, match=r"select\.models\.clip_weights=.*ViT-L-14-336px\.pt.*openai"
    ):
        load_clip("ViT-L-14-336", str(missing), "cpu", "select.models")
    with pytest.raises(WeightsError, match=r"select\.models\.clip_weights is empty"):
        load_clip("ViT-L-14-336", "", "cpu", "select.models")

"""Stage 1, step 4: a mask per box with segment-anything (SAM).

One ``set_image`` per image (the image embedding is computed once), then all boxes of the image are
prompted in one batched call (``segment.models.sam_calls: per_image``), or one call per box as the
official code does (``per_box``: slower; batched, the mask decoder's arithmetic can move a logit
across 0, so a mask may differ in a pixel); of SAM's three masks per box the one with the highest
predicted IoU is kept.
"""

from __future__ import annotations

import contextlib
from functools import partial

import numpy as np
import torch

from ..pretrained import check_weights, is_random, random_init

__all__ = ["SAM_CALLS", "SAM_TYPES", "SamSegmenter", "build_sam"]

SAM_TYPES = ("vit_h", "vit_l", "vit_b", "tiny")
SAM_CALLS = ("per_image", "per_box")


def _tiny_sam():
    """A small random SAM for tests and CI: 64 px input, one block, 32 channels."""
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    size, patch, dim = 64, 16, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=size,
            patch_size=patch,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            mlp_ratio=2,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=0,
            global_attn_indexes=(0,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(size // patch, size // patch),
            input_image_size=(size, size),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def build_sam(sam_type: str, weights: str):
    """A SAM model of ``sam_type`` (``vit_h`` | ``vit_l`` | ``vit_b`` | ``tiny``) with weights.

    ``tiny`` is a debug architecture (random weights only) for tests.

    Raises:
        WeightsError: ``weights`` is not set or missing.
        ValueError: unknown ``sam_type``, or ``tiny`` with a weights file.
    """
    if sam_type not in SAM_TYPES:
        raise ValueError(f"segment.models.sam_type must be one of {SAM_TYPES}, got {sam_type!r}")
    check_weights("segment.models", {"sam_weights": weights})
    try:
        from segment_anything import sam_model_registry
    except ImportError as e:
        raise ImportError(
            f"segment-anything is not installed ({e}); pip install 'sssc[segment]'"
        ) from None
    if sam_type == "tiny":
        if not is_random(weights):
            raise ValueError("segment.models.sam_type=tiny is a test architecture: weights=random")
        with random_init():
            return _tiny_sam().eval()
    with random_init():
        sam = sam_model_registry[sam_type](checkpoint=None)
    if not is_random(weights):
        sam.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return sam.eval()


class SamSegmenter:
    """``segmenter(image, boxes) -> (masks bool [N, H, W], scores [N])``.

    Args:
        sam: a SAM model (see :func:`build_sam`).
        device: where to run.
        amp: ``bf16`` | ``fp16`` | ``none``: autocast on CUDA only.
        calls: ``per_image`` (all boxes in one call) | ``per_box`` (the official calls).
    """

    def __init__(
        self, sam, device: str | torch.device = "cpu", amp: str = "bf16", calls: str = "per_image"
    ):
        from segment_anything import SamPredictor

        if calls not in SAM_CALLS:
            raise ValueError(f"segment.models.sam_calls must be one of {SAM_CALLS}, got {calls!r}")
        self.device = torch.device(device)
        self.predictor = SamPredictor(sam.to(self.device))
        self.amp = amp
        self.calls = calls

    def _autocast(self):
        if self.device.type == "cuda" and self.amp in ("bf16", "fp16"):
            dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dt)
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks for every box of one image.

        Args:
            image: uint8 RGB ``[H, W, 3]``.
            boxes: float ``[N, 4]`` ``x0, y0, x1, y1`` in pixels.

        Returns:
            ``masks`` bool ``[N, H, W]`` (the best of SAM's three per box) and ``scores`` float
            ``[N]`` (SAM's predicted IoU of that mask).
        """
        h, w = image.shape[:2]
        if len(boxes) == 0:
            return np.zeros((0, h, w), dtype=bool), np.zeros(0, dtype=np.float32)
        p = self.predictor
        with self._autocast():
            p.set_image(image, image_format="RGB")  # the image embedding, once per image
            # Scaled in float64, then float32, as SamPredictor.predict does for one box: the
            # official per-box masks to the pixel (tests/oracle/check_segment.py).
            b = p.transform.apply_boxes(np.asarray(boxes, dtype=np.float32), (h, w))
            b = torch.as_tensor(b, dtype=torch.float, device=self.device)
            step = 1 if self.calls == "per_box" else len(b)
            out = [
                p.predict_torch(None, None, boxes=b[i : i + step], multimask_output=True)
                for i in range(0, len(b), step)
            ]
            masks = torch.cat([o[0] for o in out])  # [N, 3, H, W] bool
            iou = torch.cat([o[1] for o in out])  # [N, 3]
        best = iou.float().argmax(dim=1)
        idx = torch.arange(len(best), device=best.device)
        out = masks[idx, best].cpu().numpy().astype(bool)
        p.reset_image()
        return out, iou.float()[idx, best].cpu().numpy()

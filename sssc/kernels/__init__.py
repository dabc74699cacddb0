"""sssc.kernels: the hot paths of Segment, Select, Correct as standalone, importable ops.

This package imports torch, numpy, numba and triton only (never the rest of ``sssc``), so other
projects can depend on it alone::

    from sssc.kernels import pairwise_soft_iou, greedy_match, reverse_blur

Each op keeps a slow, obviously correct reference beside its fast paths (``*_reference``), and
one dispatcher with ``backend="auto"``: Triton on CUDA, Numba/torch on CPU.
"""

from .greedy_match import greedy_match, greedy_match_reference
from .reverse_blur import CLIP_MEAN, CLIP_STD, reverse_blur, reverse_blur_reference
from .soft_iou import pairwise_soft_iou, pairwise_soft_iou_reference

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "greedy_match",
    "greedy_match_reference",
    "pairwise_soft_iou",
    "pairwise_soft_iou_reference",
    "reverse_blur",
    "reverse_blur_reference",
]

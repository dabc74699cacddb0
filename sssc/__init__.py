"""sssc: Segment, Select, Correct for weakly-supervised referring image segmentation.

``import sssc`` loads nothing else: ``sssc.predict`` and ``sssc.load_predictor`` (from
``sssc.inference``) load on first use, so ``import sssc.kernels`` brings in the kernels alone.
"""

__version__ = "0.1.0"

__all__ = ["load_predictor", "predict"]


def __getattr__(name: str):
    if name in __all__:
        from . import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'sssc' has no attribute {name!r}")

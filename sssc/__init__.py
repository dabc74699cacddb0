"""sssc: Segment, Select, Correct for weakly-supervised referring image segmentation."""

__version__ = "0.1.0"

# Inference; torch is imported on first use.
from .predict import load_predictor, predict  # noqa: E402

__all__ = ["load_predictor", "predict"]

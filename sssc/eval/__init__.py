"""sssc.eval: LAVT's metrics (mIoU, oIoU, prec@0.5..0.9) plus PointM/PointIt, and ``sssc eval``."""

from .metrics import THRESHOLDS, MetricAccumulator, evaluate_masks, format_table

__all__ = ["THRESHOLDS", "MetricAccumulator", "evaluate_masks", "format_table"]

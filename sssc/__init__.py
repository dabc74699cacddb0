"""sssc: Segment, Select, Correct for weakly-supervised referring image segmentation."""

__version__ = "0.1.0"

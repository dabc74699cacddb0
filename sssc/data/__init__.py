"""sssc.data: REFER datasets (RefCOCO/+/g and the synthetic one), masks, pseudo-label store."""

from .refer import DatasetError, ImageInfo, Ref, Refer, Sentence, load_refs_pickle, pack_images

__all__ = [
    "DatasetError",
    "ImageInfo",
    "Ref",
    "Refer",
    "Sentence",
    "load_refs_pickle",
    "pack_images",
]

"""The pseudo-label store: the hub between Stage 1, Stage 2 and Stage 3.

Stage 1 writes the S1 candidate pools, Stage 2 the S2 choices, Stage 3 and the evaluation read
them; no stage reads another stage's code, only its store. The on-disk format, the writer and the
lazy reader are in :mod:`sssc.store.store`; the interface every producer meets is
:class:`sssc.store.producer.Producer`.
"""

from .producer import Producer
from .store import (
    SCHEMA_VERSION,
    Candidate,
    ImageRecord,
    ObjectLabels,
    Store,
    StoreError,
    WriteReport,
    check_join,
    chosen_masks,
    s1_record,
    s2_record,
    shard_name,
    store_complete,
    write_store,
)

__all__ = [
    "SCHEMA_VERSION",
    "Candidate",
    "ImageRecord",
    "ObjectLabels",
    "Producer",
    "Store",
    "StoreError",
    "WriteReport",
    "check_join",
    "chosen_masks",
    "s1_record",
    "s2_record",
    "shard_name",
    "store_complete",
    "write_store",
]

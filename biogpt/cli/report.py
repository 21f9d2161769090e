"""`biogpt report` (being built)."""

from __future__ import annotations

from typing import Any


def register(add: Any) -> None:
    """Declares no parser yet."""

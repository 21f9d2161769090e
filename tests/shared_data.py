"""Where the tests find the shared datasets and vocabularies: `$BIOGPT_DATA`, as the CLI
looks, else `shared/data` beside the repository. Tests that need them skip, saying where
they looked and how to point them elsewhere."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

DATA = Path(
    os.environ.get("BIOGPT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)
NO_DATA = f"shared data not found at {DATA} (set BIOGPT_DATA to the data root)"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=NO_DATA)

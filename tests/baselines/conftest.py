"""The demo T2->FLAIR brains planned and preprocessed once per session (the family tests' fixture)."""
from __future__ import annotations

from tests.families.conftest import demo_planned  # noqa: F401  (session fixture, reused)

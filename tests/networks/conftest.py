"""Single-threaded torch for the tiny network tests (see tests/families/conftest.py)."""
from tests.families.conftest import one_thread  # noqa: F401  (autouse fixture)

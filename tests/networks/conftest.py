"""Network tests run single-threaded, like the family tests (tiny tensors)."""
import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """``one_thread`` lives in tests/conftest.py."""

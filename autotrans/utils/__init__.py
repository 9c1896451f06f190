"""Small shared utilities (atomic file writes, multiprocessing context)."""

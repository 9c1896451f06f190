"""Fingerprint extraction, the self-configuring planner and typed access to plans.json."""

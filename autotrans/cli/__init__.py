"""Thin command-line modules: parse arguments, call the API, turn user errors into one-line messages."""

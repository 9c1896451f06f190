"""Tests of the visual Turing test platform (autotrans.turing)."""

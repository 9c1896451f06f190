"""Dose evaluation of synthetic CTs: dose engine wrapper, gamma index and dose-volume comparison metrics."""

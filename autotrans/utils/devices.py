"""The one device choice of every command (``-device cpu|cuda|mps``): the same names, checks and messages for
training and prediction, and no torch import until a command actually runs (``--help`` stays fast)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from autotrans.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

DEVICES = ("cpu", "cuda", "mps")


def add_device_argument(parser: argparse.ArgumentParser, default: str | None) -> None:
    """``-device/--device`` with the shared choices; ``default=None`` means CUDA when available, else the CPU
    (resolved by ``resolve_device`` when the command runs)."""
    shown = default if default is not None else "cuda when available, else cpu"
    parser.add_argument("-device", "--device", choices=DEVICES, default=default,
                        help=f"{', '.join(DEVICES[:-1])} or {DEVICES[-1]} (default: {shown})")


def resolve_device(device: str | None) -> str:
    """The device a command runs on: the one asked for, else CUDA when available, else the CPU."""
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str, num_gpus: int = 1) -> "torch.device":
    """Refuse devices this machine lacks before anything is written (one line naming the flag)."""
    import torch

    if device not in DEVICES:
        raise ConfigurationError(f"device {device!r}: use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    if num_gpus < 1:
        raise ConfigurationError(f"-num_gpus {num_gpus}: must be >= 1")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigurationError("-device cuda: no CUDA device is available on this machine (use -device cpu)")
        if num_gpus > torch.cuda.device_count():
            raise ConfigurationError(f"-num_gpus {num_gpus}: only {torch.cuda.device_count()} CUDA device(s) available")
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigurationError("-device mps: Apple MPS is not available on this machine")
        if num_gpus > 1:
            raise ConfigurationError("-num_gpus > 1 is not supported on mps")
    return torch.device(device)

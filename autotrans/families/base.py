"""The family interface and its registry: the one contract training and inference share.

A family turns a plan's configuration into networks and knows how to train them and how to predict a
patch. The training loop and the predictor only talk to this interface, never to a concrete family, so
adding a generator is one module plus ``@register_family("name")``.

Tensors are ``(N, C, D, H, W)`` in the plan's normalized space (roughly [-1, 1]); ``predict_patch``
returns ``(N, 1, D, H, W)`` for the target.
"""
from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from autotrans.errors import ConfigurationError
from autotrans.planning.plans import Configuration, Plans

_FAMILIES: dict[str, type["Family"]] = {}


def register_family(name: str) -> Callable[[type["Family"]], type["Family"]]:
    """Class decorator: make a family available under ``name`` (what users type after the configuration)."""

    def deco(cls: type["Family"]) -> type["Family"]:
        if name in _FAMILIES and _FAMILIES[name] is not cls:
            raise ValueError(f"family {name!r} registered twice ({_FAMILIES[name].__name__}, {cls.__name__})")
        cls.name = name
        _FAMILIES[name] = cls
        return cls

    return deco


def available_families() -> list[str]:
    return sorted(_FAMILIES)


def get_family(name: str) -> type["Family"]:
    """Look up a family class; an unknown name lists the valid ones and the closest match."""
    if name not in _FAMILIES:
        close = difflib.get_close_matches(name, list(_FAMILIES), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(f"unknown model {name!r}{hint}; available: {', '.join(available_families()) or 'none'}")
    return _FAMILIES[name]


class Family(ABC):
    """One generator family. Subclasses hold their networks, optimizers and hyperparameters (from the plan)."""

    name: str = ""
    #: whether the generator is stochastic (predict_patch then uses the ``generator`` argument)
    stochastic: bool = False

    def __init__(self, plans: Plans, configuration: Configuration, overrides: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.plans = plans
        self.configuration = configuration
        self.overrides = dict(overrides or {})
        self.device = torch.device(device)

    # --- building -----------------------------------------------------------------------------
    @abstractmethod
    def build(self) -> None:
        """Create the networks from the plan (``self.configuration.family(...)``) on ``self.device``."""

    def configure_optimizers(self) -> None:
        """Create optimizers and LR schedulers (training only; inference never calls this)."""

    # --- training -----------------------------------------------------------------------------
    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError(f"{self.name}: training is not implemented")

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError(f"{self.name}: validation is not implemented")

    # --- inference ----------------------------------------------------------------------------
    @abstractmethod
    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map a normalized source patch ``(N, C, D, H, W)`` to the normalized target ``(N, 1, D, H, W)``."""

    # --- persistence --------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, torch.nn.Module]:
        """The named networks whose weights a checkpoint stores (inference needs only these)."""

    def state_dict(self) -> dict[str, Any]:
        return {name: net.state_dict() for name, net in self.networks().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nets = self.networks()
        missing = sorted(set(nets) - set(state))
        if missing:
            raise ConfigurationError(f"{self.name}: checkpoint lacks network(s) {', '.join(missing)}")
        for name, net in nets.items():
            net.load_state_dict(state[name])

    def eval(self) -> "Family":
        for net in self.networks().values():
            net.eval()
        return self

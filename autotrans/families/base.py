"""The family interface and its registry: the one contract training and inference share.

A family turns a plan's configuration into networks and knows how to train them and how to predict a
patch. The training loop and the predictor only talk to this interface, never to a concrete family, so
adding a generator is one module plus ``@register_family("name")``.

Tensors are ``(N, C, D, H, W)`` in the plan's normalized space (roughly [-1, 1]); ``predict_patch``
returns ``(N, 1, D, H, W)`` for the target. Training batches are dicts with ``source`` (N, C, D, H, W),
``target`` (N, 1, D, H, W) and ``mask`` (N, 1, D, H, W, float 0/1; all ones without masks); for families
with ``paired_batches = False`` source and target come from different cases, ``mask`` is the source
case's mask and ``target_mask`` the target case's.
"""
from __future__ import annotations

import contextlib
import difflib
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterable

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

    #: whether training batches pair source and target of the same case (CycleGAN: False)
    paired_batches: bool = True

    #: whether the family maps source to target (the autoencoder only reconstructs: no whole-volume validation
    #: or prediction)
    translates: bool = True

    #: trained models this family builds on, as ``(family name, override key)``: the training run trains each
    #: missing one first (same fold, budget and device) and passes its checkpoint's path in the override
    #: (the latent models: the fold's ``autoencoder``; ``ldm_controlnet`` also its ``ldm_prior``)
    dependencies: tuple[tuple[str, str], ...] = ()

    def __init__(self, plans: Plans, configuration: Configuration, overrides: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu") -> None:
        self.plans = plans
        self.configuration = configuration
        self.overrides = dict(overrides or {})
        self.device = torch.device(device)
        # set by the training engine before configure_optimizers(); inference leaves the defaults
        self.autocast_dtype: torch.dtype | None = None  # bf16 on CUDA (fp16 where bf16 is missing), None on CPU
        self.scaler: torch.amp.GradScaler | None = None  # only with fp16
        self.grad_clip: float | None = 12.0
        self.epoch = 0  # epochs completed (checkpointed): warm-ups and phase switches read it

    # --- hyperparameters ----------------------------------------------------------------------
    def hparam(self, key: str, default: Any) -> Any:
        """A family hyperparameter: CLI/run override, else the plan's family section, else ``default``."""
        if key in self.overrides:
            return self.overrides[key]
        section = self.configuration.data.get("families", {}).get(self.name, {})
        return section.get(key, default)

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def planned_batch_size(cls, configuration: Configuration) -> int | None:
        """The batch size the plan sized for this family (None: the configuration's U-Net batch size)."""
        bs = configuration.data.get("families", {}).get(cls.name, {}).get("batch_size")
        return int(bs) if bs else None

    @classmethod
    def phases(cls, num_epochs: int, overrides: dict[str, Any] | None = None) -> dict[str, int]:
        """Epochs of each named training phase a run of ``num_epochs`` has (one phase by default). A family whose
        name means several phases (SRGAN: SRResNet pre-training, then the GAN) lists them, so a short run that
        leaves one out can be detected (``minimum_epochs``)."""
        return {"training": int(num_epochs)}

    @classmethod
    def minimum_epochs(cls, overrides: dict[str, Any] | None = None) -> int:
        """The fewest epochs with which a run trains this family as what it is named: every phase of it, and of
        the shared stages it trains first with the same budget (``dependencies``), gets at least one epoch.

        The demo gives each model at least this many (``autotrans.benchmark.demo.budget_schedule``)."""
        need = 1
        for dependency, _ in cls.dependencies:  # trained with the same epochs, without this model's overrides
            need = max(need, get_family(dependency).minimum_epochs())
        for n in range(need, 10_000):
            if min(cls.phases(n, overrides).values(), default=1) >= 1:
                return n
        phases = ", ".join(cls.phases(need, overrides))
        raise ConfigurationError(f"{cls.name}: no number of epochs trains every phase ({phases})")

    @abstractmethod
    def build(self) -> None:
        """Create the networks from the plan (``self.configuration.family(...)``) on ``self.device``."""

    def load_dependencies(self) -> None:
        """Load trained networks this family builds on (fresh training runs only; resumed runs and inference get
        them from the checkpoint)."""

    def configure_optimizers(self) -> None:
        """Create optimizers and LR schedulers (training only; inference never calls this)."""

    def resolved_hparams(self) -> dict[str, Any]:
        """Every hyperparameter this run uses, resolved (written to the results folder by the engine)."""
        return {}

    # --- training -----------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers (checkpointed by the engine)."""
        return {}

    def schedulers(self) -> dict[str, Any]:
        """Named LR schedulers stepped once per epoch by ``on_epoch_end`` (checkpointed by the engine)."""
        return {}

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        for sched in self.schedulers().values():
            sched.step()
        self.epoch = epoch + 1

    def paired_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(source, target, mask)`` of a paired batch on this family's device (``mask`` None when absent)."""
        mask = batch.get("mask")
        return (batch["source"].to(self.device), batch["target"].to(self.device),
                None if mask is None else mask.to(self.device))

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes when the engine enabled it; a no-op otherwise."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def optimize(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                 parameters: Iterable[torch.nn.Parameter]) -> None:
        """One optimizer step: zero grads, (scaled) backward, unscale, clip, step."""
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step(optimizer, parameters)

    def backward(self, loss: torch.Tensor) -> None:
        """(Scaled) backward that accumulates into the gradients: a step whose loss is a sum of terms on separate
        graphs can backpropagate each term as soon as it is computed, so only one graph is alive at a time."""
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Unscale, clip and apply the accumulated gradients."""
        params = list(parameters)
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()

    def train_state_dict(self) -> dict[str, Any]:
        """Optimizer and scheduler states (the engine adds epoch, RNG, logs)."""
        return {"optimizers": {k: o.state_dict() for k, o in self.optimizers().items()},
                "schedulers": {k: s.state_dict() for k, s in self.schedulers().items()}, "epoch": self.epoch}

    def load_train_state_dict(self, state: dict[str, Any]) -> None:
        for k, o in self.optimizers().items():
            o.load_state_dict(state["optimizers"][k])
        for k, sch in self.schedulers().items():
            sch.load_state_dict(state["schedulers"][k])
        self.epoch = int(state.get("epoch", 0))

    def wrap_networks(self, wrap: Callable[[torch.nn.Module], torch.nn.Module]) -> None:
        """Replace each trainable network by ``wrap(net)`` (DDP, torch.compile). Families store their networks
        as attributes named like the keys of ``networks()``, so the default can set them back."""
        for name, net in self.networks().items():
            setattr(self, name, wrap(net))

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError(f"{self.name}: training is not implemented")

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError(f"{self.name}: validation is not implemented")

    def validation_prediction_limit(self) -> int | None:
        """How many validation batches per epoch ``validation_prediction`` serves (None: all; the latent models
        sample only a few, cheaply: see their ``val_sampling_*`` hyperparameters)."""
        return None

    def validation_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """What the engine compares with ``batch["target"]`` in physical units each epoch (default: the
        translation of the source patch)."""
        return self.predict_patch(batch["source"])

    # --- inference ----------------------------------------------------------------------------
    @abstractmethod
    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Map a normalized source patch ``(N, C, D, H, W)`` to the normalized target ``(N, 1, D, H, W)``."""

    # --- persistence --------------------------------------------------------------------------
    @abstractmethod
    def networks(self) -> dict[str, torch.nn.Module]:
        """The named networks whose weights a checkpoint stores (inference needs only these)."""

    def state_dict(self) -> dict[str, Any]:
        """Weights of every network, unwrapped from DDP / torch.compile so checkpoints load anywhere."""
        return {name: unwrap(net).state_dict() for name, net in self.networks().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        nets = self.networks()
        missing = sorted(set(nets) - set(state))
        if missing:
            raise ConfigurationError(f"{self.name}: checkpoint lacks network(s) {', '.join(missing)}")
        for name, net in nets.items():
            unwrap(net).load_state_dict(state[name])

    def eval(self) -> "Family":
        for net in self.networks().values():
            net.eval()
        return self


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The plain module behind DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(net, "_orig_mod", None) or getattr(net, "module", None)
        if not isinstance(inner, torch.nn.Module):
            return net
        net = inner

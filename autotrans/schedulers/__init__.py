"""Samplers for the latent families: immutable schedule configurations whose sampling loops take every input
(model, start tensor, steps, eta, generator) as arguments, so no step counter or random state hides inside.

* :class:`DiffusionSchedule` — DDPM training / DDIM sampling, a thin wrapper over MONAI's schedulers.
* :class:`BrownianBridgeSchedule` — BBDM (Li et al., CVPR 2023): target latent at t = 0, source at t = T.
* :class:`FlowMatchingSchedule` — conditional flow matching / rectified flow, t = 0 start to t = 1 target.
"""
from __future__ import annotations

from autotrans.schedulers.bridge import BrownianBridgeSchedule
from autotrans.schedulers.diffusion import DiffusionSchedule
from autotrans.schedulers.flow import FlowMatchingSchedule

__all__ = ["BrownianBridgeSchedule", "DiffusionSchedule", "FlowMatchingSchedule"]

"""The demo trains every model as what it is named (issue 15.8): each model gets at least its family's
``minimum_epochs``, computed from the family's phases, with the demo's total iterations kept."""
from __future__ import annotations

import pytest

import autotrans.families  # noqa: F401  (registers the shipped families)
from autotrans.benchmark.demo import DEMO_MODELS, budget_schedule, minimum_epochs
from autotrans.families.base import get_family


@pytest.mark.parametrize("budget", [0.01, 0.05, 1.0, 3.0])
@pytest.mark.parametrize("model", DEMO_MODELS)
def test_every_phase_of_every_demo_model_runs(model: str, budget: float) -> None:
    family = get_family(model)
    s = budget_schedule(budget, model)
    assert s.epochs >= family.minimum_epochs() == minimum_epochs(model)
    assert all(n >= 1 for n in family.phases(s.epochs).values()), family.phases(s.epochs)
    for dependency, _ in family.dependencies:  # shared stages train with the same epochs first
        assert all(n >= 1 for n in get_family(dependency).phases(s.epochs).values())
    base = budget_schedule(budget)
    assert s.epochs * s.iterations <= max(base.epochs * base.iterations, 2 * s.epochs)  # no more time than before
    assert (s.val_iterations, s.steps) == (base.val_iterations, base.steps)


def test_ldm_controlnet_trains_its_controlnet_on_a_trained_prior() -> None:
    family = get_family("ldm_controlnet")
    s = budget_schedule(1.0, "ldm_controlnet")
    phases = family.phases(s.epochs)
    assert phases["ControlNet"] >= 1 and phases["ldm_prior (frozen base, a shared stage)"] >= 1
    assert ("ldm_prior", "prior_checkpoint") in family.dependencies


def test_srgan_gets_its_pretraining_phase() -> None:
    family = get_family("srgan")
    assert family.phases(1) == {"SRResNet pre-training": 0, "GAN": 1}  # one epoch: no pre-training
    assert family.minimum_epochs() == 2
    s = budget_schedule(1.0, "srgan")
    assert (s.epochs, s.iterations) == (2, 5)  # the same 10 iterations, over both phases
    assert family.minimum_epochs({"pretrain_fraction": 0.1}) == 6  # round(0.1 n) >= 1 from n = 6 (0.5 rounds to 0)
    assert family.minimum_epochs({"pretrain_fraction": 0}) == 1  # pre-training switched off: the GAN alone
    assert budget_schedule(1.0, "pix2pix") == budget_schedule(1.0)


def test_baselines_and_unknown_names_need_one_epoch() -> None:
    assert minimum_epochs("no_such_model") == 1

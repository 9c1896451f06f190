"""The latent family (autoencoder, ldm, ldm_controlnet, bbdm, flow_matching) on tiny networks and real patches."""
from __future__ import annotations

import math

import pytest
import torch

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.errors import ConfigurationError
from autotrans.families.base import Family
from autotrans.families.latent import pad_to_multiple
from autotrans.planning.planner import plans_hash
from autotrans.results import save_checkpoint
from tests.families.helpers import make_family, real_batch, snapshot

LATENT = ["ldm", "ldm_controlnet", "bbdm", "flow_matching"]
PATCH = (32, 32, 32)  # latent 8^3, a two-level diffusion U-Net


def checkpoint(fam: Family, family: str, networks: dict) -> dict:
    """A checkpoint record as the engine writes it (the fields load_checkpoint checks)."""
    return {"family": family, "configuration": "3d_fullres", "plans_sha1": plans_hash(fam.plans.data),
            "overrides": {}, "networks": networks}


def make(name: str, demo_planned, seed: int = 0, overrides: dict | None = None, patch=PATCH) -> Family:
    return make_family(name, demo_planned[0], seed, {"num_epochs": 4, "sampling_steps": 3, **(overrides or {})},
                       patch)


@pytest.fixture(scope="module")
def ae_checkpoint(demo_planned, tmp_path_factory) -> str:
    """A briefly trained tiny autoencoder, saved like the engine saves it."""
    ae = make("autoencoder", demo_planned, overrides={"adversarial_start": 0})
    ae.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    for step in range(3):
        ae.train_step(batch, step)
    ae.on_epoch_end(0, 4)
    path = tmp_path_factory.mktemp("ae") / "checkpoint_final.pth"
    save_checkpoint(checkpoint(ae, "autoencoder", ae.state_dict()), path)
    return str(path)


def test_pad_to_multiple_round_trip() -> None:
    x = torch.randn(1, 2, 5, 8, 7)
    y, inner = pad_to_multiple(x, 4, -1.0)
    assert y.shape == (1, 2, 8, 8, 8) and torch.equal(y[(slice(None), slice(None), *inner)], x)
    assert float(y[0, 0, 0, 0, 0]) == -1.0


def test_autoencoder_trains_both_modalities_and_scales_latents(demo_planned) -> None:
    ae = make("autoencoder", demo_planned, overrides={"adversarial_start": 0})
    ae.configure_optimizers()
    assert set(ae.optimizers()) == {"ae_source", "ae_target", "disc_source", "disc_target"}
    before = snapshot(ae)
    out = ae.train_step(real_batch(demo_planned[1], n=1, patch=PATCH), step=0)
    assert {"source/l1", "target/l1", "source/kl", "source/d", "target/g_adv"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    after = snapshot(ae)
    unchanged = [k for k, p in before.items() if p.ndim > 1 and torch.equal(p, after[k])]
    assert not unchanged, unchanged[:5]
    # the scaling factor is 1/std of the posterior means recorded this epoch
    net = ae.ae_target
    mu = torch.randn(2, 4, 8, 8, 8) * 3.0 + 1.0
    net.moments.zero_()
    net.record(mu)
    assert net.update_scale() == pytest.approx(1.0 / mu.double().std(unbiased=False).item(), rel=1e-6)
    assert float(net.moments.abs().sum()) == 0.0


def test_autoencoder_does_not_translate(demo_planned) -> None:
    ae = make("autoencoder", demo_planned)
    assert not ae.translates
    with pytest.raises(ConfigurationError, match="does not translate"):
        ae.predict_patch(torch.zeros(1, 1, *PATCH))
    batch = real_batch(demo_planned[1], n=1, patch=(20, 24, 16))  # not a multiple of the divisor
    assert ae.validation_prediction(batch).shape == batch["target"].shape


@pytest.mark.parametrize("name", LATENT)
def test_latent_model_needs_a_trained_autoencoder(name: str, demo_planned, tmp_path) -> None:
    fam = make(name, demo_planned)
    with pytest.raises(ConfigurationError, match="autoencoder"):
        fam.load_dependencies()
    bogus = tmp_path / "x.pth"
    save_checkpoint(checkpoint(fam, "pix2pix", {}), bogus)
    fam.overrides["autoencoder_checkpoint"] = str(bogus)
    with pytest.raises(ConfigurationError, match="not an autoencoder"):
        fam.load_dependencies()


@pytest.mark.parametrize("name", LATENT)
def test_latent_train_step_trains_only_the_denoisers(name: str, demo_planned, ae_checkpoint) -> None:
    fam = make(name, demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint})
    fam.load_dependencies()
    ae_state = torch.load(ae_checkpoint, weights_only=False)["networks"]
    assert all(torch.equal(v, fam.ae_target.state_dict()[k]) for k, v in ae_state["ae_target"].items())
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    if name == "ldm_controlnet":  # phase 1 trains the target LDM (whose zero-initialised output conv must move
        before = snapshot(fam)    # before the frozen U-Net passes any gradient to the ControlNet), then phase 2
        fam.train_step(batch, step=0)
        assert {k.split(".")[0] for k, v in snapshot(fam).items() if not torch.equal(before[k], v)} == {"unet"}
        fam.on_epoch_end(0, 4)
        fam.on_epoch_end(1, 4)
        unet = {k: v for k, v in fam.unet.state_dict().items()}
        copied = [k for k, v in fam.controlnet.state_dict().items() if k in unet and torch.equal(v, unet[k])]
        assert len(copied) > 10  # initialised from the trained U-Net
    before = snapshot(fam)
    out = fam.train_step(batch, step=1)
    assert out and all(math.isfinite(v) for v in out.values()), out
    after = snapshot(fam)
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    expected = {"controlnet"} if name == "ldm_controlnet" else {"unet"}
    assert moved == expected, moved


@pytest.mark.parametrize("name", LATENT)
def test_latent_prediction_is_seeded_and_round_trips(name: str, demo_planned) -> None:
    x = real_batch(demo_planned[1], n=1, patch=(20, 24, 16))["source"]  # padded to the divisor, cropped back
    a = make(name, demo_planned, seed=0).eval()

    def run(fam: Family, seed: int) -> torch.Tensor:
        return fam.predict_patch(x, torch.Generator().manual_seed(seed))

    ya = run(a, 7)
    assert ya.shape == (1, 1, 20, 24, 16) and float(ya.abs().max()) <= 1.0
    assert torch.equal(ya, run(a, 7))
    if name != "flow_matching":  # the flow from the source latent draws nothing; the others draw from the seed
        assert not torch.equal(ya, run(a, 8))
    b = make(name, demo_planned, seed=1).eval()
    b.load_state_dict(a.state_dict())
    assert torch.equal(ya, run(b, 7))
    assert {"ae_source", "ae_target"} <= set(a.state_dict())  # the checkpoint carries its autoencoders


@pytest.mark.parametrize("name", LATENT)
def test_latent_validation_loss_is_deterministic(name: str, demo_planned) -> None:
    fam = make(name, demo_planned)
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    before = snapshot(fam)
    first, second = fam.validation_step(batch), fam.validation_step(batch)
    assert first == second and all(math.isfinite(v) for v in first.values())
    assert all(torch.equal(before[k], v) for k, v in snapshot(fam).items())


def test_sampling_steps_follow_the_plan_and_steps_override(demo_planned) -> None:
    fam = make_family("flow_matching", demo_planned[0], 0, {}, PATCH)
    assert fam.sampling_steps == 25 and fam.resolved_hparams()["flow_source"] == "source_latent"
    assert make_family("ldm", demo_planned[0], 0, {"sampling_steps": 7}, PATCH).sampling_steps == 7
    with pytest.raises(ConfigurationError, match="flow_source"):
        make_family("flow_matching", demo_planned[0], 0, {"flow_source": "bogus"}, PATCH)


def test_flow_matching_from_noise_uses_the_noise(demo_planned) -> None:
    fam = make("flow_matching", demo_planned, overrides={"flow_source": "noise"}).eval()
    zs = torch.zeros(1, fam.latent_channels, 8, 8, 8)
    noise = torch.randn(zs.shape, generator=torch.Generator().manual_seed(0))
    fam.overrides["sampling_steps"] = 0
    assert torch.equal(fam.sample_latent(zs, noise, None), noise)  # t = 0: the start of the flow


def test_controlnet_phases(demo_planned) -> None:
    fam = make("ldm_controlnet", demo_planned, overrides={"num_epochs": 4, "controlnet_start": 0.5})
    fam.configure_optimizers()
    assert fam.switch_epoch() == 2 and not fam.controlnet_phase
    fam.on_epoch_end(0, 4)
    assert any(p.requires_grad for p in fam.unet.parameters())
    fam.on_epoch_end(1, 4)
    assert fam.controlnet_phase and not any(p.requires_grad for p in fam.unet.parameters())
    # a resumed run restores the phase (and the frozen U-Net) from the train state
    again = make("ldm_controlnet", demo_planned, overrides={"num_epochs": 4})
    again.configure_optimizers()
    again.load_train_state_dict(fam.train_state_dict())
    assert again.controlnet_phase and not any(p.requires_grad for p in again.unet.parameters())
    with pytest.raises(ConfigurationError, match="source image"):
        fam.sample_latent(torch.zeros(1, 4, 8, 8, 8), torch.zeros(1, 4, 8, 8, 8), None)


def test_autoencoder_round_trip_on_a_real_crop(demo_planned) -> None:
    """After a short training (40 steps, lr 1e-3, no adversarial term) on one real T2/FLAIR crop, the target
    autoencoder reconstructs it within 0.25 mean absolute error in the normalized [-1, 1] scale (documented in
    latent_models.md), less than 40 % of its error before training."""
    ae = make("autoencoder", demo_planned, overrides={"adversarial_start": 1.0, "lr": 1e-3, "num_epochs": 100},
              patch=(16, 16, 16))
    ae.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=(16, 16, 16))

    def error() -> float:
        return (ae.reconstruct("target", batch["target"]) - batch["target"]).abs().mean().item()

    before = error()
    for step in range(40):
        ae.train_step(batch, step)
    after = error()
    assert after < 0.25 and after < 0.4 * before, (before, after)


@pytest.mark.parametrize("name", ["autoencoder", *LATENT])
def test_latent_mixed_precision_step(name: str, demo_planned) -> None:
    """bf16 autocast (what the engine enables on GPUs) runs on the CPU too: finite losses, fp32 outputs."""
    fam = make(name, demo_planned, overrides={"adversarial_start": 0}, patch=(16, 16, 16))
    fam.autocast_dtype = torch.bfloat16
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=2, patch=(16, 16, 16))
    losses = {**fam.train_step(batch, step=0), **fam.validation_step(batch)}
    assert all(math.isfinite(v) for v in losses.values()), losses
    out = fam.validation_prediction(batch) if name == "autoencoder" else fam.eval().predict_patch(batch["source"])
    assert out.dtype == torch.float32


def test_planned_batch_sizes_come_from_the_latent_sub_sections(demo_planned) -> None:
    import copy

    from autotrans.families.base import get_family
    from autotrans.planning.plans import Plans

    data = copy.deepcopy(demo_planned[0].data)
    fams = data["configurations"]["3d_fullres"]["families"]
    fams["pix2pix"]["batch_size"], fams["latent"]["autoencoder"]["batch_size"] = 3, 5
    fams["latent"]["diffusion_unet"]["batch_size"] = 7
    cfg = Plans(data).configuration("3d_fullres")
    assert get_family("pix2pix").planned_batch_size(cfg) == 3
    assert get_family("autoencoder").planned_batch_size(cfg) == 5
    assert all(get_family(n).planned_batch_size(cfg) == 7 for n in LATENT)

"""The latent family (autoencoder, ldm, ldm_prior, ldm_controlnet, bbdm, flow_matching) on tiny networks and
real patches."""
from __future__ import annotations

import math

import pytest
import torch

import autotrans.families  # noqa: F401  (registers the families)
from autotrans.errors import ConfigurationError
from autotrans.families.autoencoder import autoencoder_loss, kl_divergence
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


@pytest.fixture(scope="module")
def prior_checkpoint(demo_planned, ae_checkpoint, tmp_path_factory) -> str:
    """A briefly trained tiny unconditional prior on that autoencoder (the ControlNet's base model)."""
    prior = make("ldm_prior", demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint, "ema_every": 1})
    prior.load_dependencies()
    prior.configure_optimizers()
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    for step in range(3):
        prior.train_step(batch, step)
    path = tmp_path_factory.mktemp("prior") / "checkpoint_final.pth"
    save_checkpoint(checkpoint(prior, "ldm_prior", prior.state_dict()), path)
    return str(path)


def dependencies(ae_checkpoint: str, prior_checkpoint: str) -> dict:
    return {"autoencoder_checkpoint": ae_checkpoint, "prior_checkpoint": prior_checkpoint}


def test_pad_to_multiple_round_trip() -> None:
    x = torch.randn(1, 2, 5, 8, 7)
    y, inner = pad_to_multiple(x, 4, -1.0)
    assert y.shape == (1, 2, 8, 8, 8) and torch.equal(y[(slice(None), slice(None), *inner)], x)
    assert float(y[0, 0, 0, 0, 0]) == -1.0


def test_one_autoencoder_trains_on_every_modality_and_scales_latents(demo_planned) -> None:
    ae = make("autoencoder", demo_planned, overrides={"adversarial_start": 0})
    ae.configure_optimizers()
    assert set(ae.optimizers()) == {"ae", "disc"} and set(ae.networks()) == {"ae", "disc"}
    before = snapshot(ae)
    out = ae.train_step(real_batch(demo_planned[1], n=1, patch=PATCH), step=0)
    assert {"source_0/l1", "target/l1", "source_0/kl", "source_0/d", "target/g_adv"} <= set(out)
    assert all(math.isfinite(v) for v in out.values())
    after = snapshot(ae)
    unchanged = [k for k, p in before.items() if p.ndim > 1 and torch.equal(p, after[k])]
    assert not unchanged, unchanged[:5]
    # the scaling factor is 1/std of the posterior means recorded this epoch
    net = ae.ae
    mu = torch.randn(2, 4, 8, 8, 8) * 3.0 + 1.0
    net.moments.zero_()
    net.record(mu)
    assert net.update_scale() == pytest.approx(1.0 / mu.double().std(unbiased=False).item(), rel=1e-6)
    assert float(net.moments.abs().sum()) == 0.0


def test_autoencoder_kl_has_the_ldm_papers_effective_weight() -> None:
    """The LDM code sums the reconstruction over pixels and the KL over latent elements (weight 1e-6); ours divides
    both by the voxel count, so the KL-to-reconstruction ratio is the paper's, not ~n_voxels times larger."""
    g = torch.Generator().manual_seed(0)
    x, rec = torch.rand(2, 1, 16, 16, 16, generator=g), torch.rand(2, 1, 16, 16, 16, generator=g)
    mu, sigma = torch.randn(2, 4, 4, 4, 4, generator=g), torch.rand(2, 4, 4, 4, 4, generator=g) + 0.1
    loss, l1, kl = autoencoder_loss(x, rec, mu, sigma, 1e-6)
    ldm_sum = (rec - x).abs().flatten(1).sum(1).mean() + 1e-6 * kl_divergence(mu, sigma)  # the LDM code's loss
    assert loss.item() == pytest.approx(ldm_sum.item() / 16 ** 3, rel=1e-5)
    assert l1.item() == pytest.approx((rec - x).abs().mean().item(), rel=1e-6)


@pytest.mark.parametrize("name", ["autoencoder", "ldm_prior"])
def test_stages_do_not_translate(name: str, demo_planned) -> None:
    ae = make(name, demo_planned)
    assert not ae.translates
    with pytest.raises(ConfigurationError, match="does not translate"):
        ae.predict_patch(torch.zeros(1, 1, *PATCH))
    if name == "autoencoder":
        batch = real_batch(demo_planned[1], n=1, patch=(20, 24, 16))  # not a multiple of the divisor
        assert ae.validation_prediction(batch).shape == batch["target"].shape


@pytest.mark.parametrize("name", [*LATENT, "ldm_prior"])
def test_latent_model_needs_a_trained_autoencoder(name: str, demo_planned, tmp_path) -> None:
    fam = make(name, demo_planned)
    with pytest.raises(ConfigurationError, match="autoencoder"):
        fam.load_dependencies()
    bogus = tmp_path / "x.pth"
    save_checkpoint(checkpoint(fam, "pix2pix", {}), bogus)
    fam.overrides["autoencoder_checkpoint"] = str(bogus)
    with pytest.raises(ConfigurationError, match="not of autoencoder"):
        fam.load_dependencies()


def test_controlnet_needs_a_prior_on_the_same_autoencoder(demo_planned, ae_checkpoint, prior_checkpoint,
                                                          tmp_path) -> None:
    fam = make("ldm_controlnet", demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint})
    with pytest.raises(ConfigurationError, match="ldm_prior"):
        fam.load_dependencies()
    other = make("autoencoder", demo_planned, seed=5)  # a different autoencoder
    path = tmp_path / "ae.pth"
    save_checkpoint(checkpoint(other, "autoencoder", other.state_dict()), path)
    fam = make("ldm_controlnet", demo_planned, overrides=dependencies(str(path), prior_checkpoint))
    with pytest.raises(ConfigurationError, match="another autoencoder"):
        fam.load_dependencies()


@pytest.mark.parametrize("name", [*LATENT, "ldm_prior"])
def test_latent_train_step_trains_only_the_denoisers(name: str, demo_planned, ae_checkpoint, prior_checkpoint) -> None:
    fam = make(name, demo_planned, overrides={**dependencies(ae_checkpoint, prior_checkpoint), "ema_every": 1})
    fam.load_dependencies()
    ae_state = torch.load(ae_checkpoint, weights_only=False)["networks"]
    assert all(torch.equal(v, fam.ae.state_dict()[k]) for k, v in ae_state["ae"].items())
    fam.configure_optimizers()
    if name == "ldm_controlnet":  # the frozen base is the prior's EMA U-Net; the ControlNet starts from its encoder
        prior = torch.load(prior_checkpoint, weights_only=False)["networks"]["ema_unet"]
        assert all(torch.equal(v, fam.unet.state_dict()[k]) for k, v in prior.items())
        copied = [k for k, v in fam.controlnet.state_dict().items() if k in prior and torch.equal(v, prior[k])]
        assert len(copied) > 10
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    before = snapshot(fam)
    out = fam.train_step(batch, step=0)
    assert out and all(math.isfinite(v) for v in out.values()), out
    after = snapshot(fam)
    moved = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    trained = "controlnet" if name == "ldm_controlnet" else "unet"
    assert moved == {trained, f"ema_{trained}"}, moved  # the EMA follows (ema_every 1), nothing else moves
    assert fam.ema_updates == 1


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
    assert {"ae", "ema_" + next(iter(a.denoisers()))} <= set(a.state_dict())  # self-contained, EMA included


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
    assert make_family("bbdm", demo_planned[0], 0, {}, PATCH).sampling_steps == 200  # BBDM's released sample_step
    assert make_family("ldm", demo_planned[0], 0, {"sampling_steps": 7}, PATCH).sampling_steps == 7
    with pytest.raises(ConfigurationError, match="flow_source"):
        make_family("flow_matching", demo_planned[0], 0, {"flow_source": "bogus"}, PATCH)


def _record_unet_inputs(fam: Family) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    for net in (fam.unet, *fam.ema.values()):
        net.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("name", ["bbdm", "flow_matching", "ldm"])
def test_denoiser_input_includes_the_source_latent(name: str, demo_planned, ae_checkpoint) -> None:
    """As released, BBDM's denoiser sees [x_t, y] (in_channels twice the latent channels), in training and sampling;
    the flow and the LDM likewise; the bridge's y and the flow's start are latents of the same autoencoder."""
    fam = make(name, demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint, "sampling_steps": 2})
    fam.load_dependencies()
    fam.configure_optimizers()
    lc = fam.latent_channels
    assert fam.unet.conv_in.conv.in_channels == 2 * lc
    batch = real_batch(demo_planned[1], n=1, patch=PATCH)
    zs, zt, _ = fam.latents(batch)
    assert torch.equal(zs, fam.ae.encode(fam.pad(batch["source"])))  # one autoencoder for both domains
    seen = _record_unet_inputs(fam)
    fam.train_step(batch, 0)
    fam.sample_latent(zs, torch.randn_like(zt), torch.Generator().manual_seed(0))
    assert len(seen) == 3  # one training pass, two sampling steps
    assert all(x.shape[1] == 2 * lc and torch.equal(x[:, lc:], zs) for x in seen)


def test_prediction_uses_the_ema_weights(demo_planned, ae_checkpoint) -> None:
    fam = make("bbdm", demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint})
    fam.load_dependencies()
    fam.configure_optimizers()
    with torch.no_grad():
        for p in fam.ema["unet"].parameters():
            p.add_(0.01 * torch.randn_like(p))
    x = real_batch(demo_planned[1], n=1, patch=PATCH)["source"]
    y = fam.eval().predict_patch(x, torch.Generator().manual_seed(0))
    plain = make("bbdm", demo_planned, overrides={"autoencoder_checkpoint": ae_checkpoint, "ema": False})
    plain.load_dependencies()
    plain.unet.load_state_dict(fam.ema["unet"].state_dict())  # the live weights of a model without EMA
    assert torch.equal(plain.eval().predict_patch(x, torch.Generator().manual_seed(0)), y)
    fam.ema.clear()  # without EMA the live (different) weights predict
    assert not torch.equal(fam.predict_patch(x, torch.Generator().manual_seed(0)), y)


def test_ema_follows_the_weights_with_the_ldm_warm_up(demo_planned) -> None:
    fam = make("ldm", demo_planned, overrides={"ema_every": 2, "ema_decay": 0.995})
    fam.configure_optimizers()
    ema, live = fam.ema["unet"], fam.unet
    key = next(k for k, v in live.state_dict().items() if v.dtype.is_floating_point and v.abs().sum() > 0)
    with torch.no_grad():
        live.state_dict()[key].add_(1.0)
    start = ema.state_dict()[key].clone()
    fam.update_ema(step=0)  # not an update step
    assert torch.equal(ema.state_dict()[key], start) and fam.ema_updates == 0
    fam.update_ema(step=1)  # first update: decay min(0.995, 1/10)
    assert torch.allclose(ema.state_dict()[key], 0.1 * start + 0.9 * live.state_dict()[key])
    assert fam.ema_updates == 1 and fam.train_state_dict()["ema_updates"] == 1


def test_flow_matching_from_noise_uses_the_noise(demo_planned) -> None:
    fam = make("flow_matching", demo_planned, overrides={"flow_source": "noise"}).eval()
    noise = torch.randn((1, fam.latent_channels, 8, 8, 8), generator=torch.Generator().manual_seed(0))
    fam.overrides["sampling_steps"] = 0
    assert torch.equal(fam.sample_latent(torch.zeros(1, 4, 8, 8, 8), noise, None), noise)  # t = 0: the start


def test_controlnet_samples_from_the_source_image(demo_planned) -> None:
    fam = make("ldm_controlnet", demo_planned)
    assert set(fam.denoisers()) == {"controlnet"} and not any(p.requires_grad for p in fam.unet.parameters())
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
        return (ae.reconstruct(batch["target"]) - batch["target"]).abs().mean().item()

    before = error()
    for step in range(40):
        ae.train_step(batch, step)
    after = error()
    assert after < 0.25 and after < 0.4 * before, (before, after)


@pytest.mark.parametrize("name", ["autoencoder", "ldm_prior", *LATENT])
def test_latent_mixed_precision_step(name: str, demo_planned) -> None:
    """bf16 autocast (what the engine enables on GPUs) runs on the CPU too: finite losses, fp32 outputs."""
    fam = make(name, demo_planned, overrides={"adversarial_start": 0}, patch=(16, 16, 16))
    fam.autocast_dtype = torch.bfloat16
    fam.configure_optimizers()
    batch = real_batch(demo_planned[1], n=2, patch=(16, 16, 16))
    losses = {**fam.train_step(batch, step=0), **fam.validation_step(batch)}
    assert all(math.isfinite(v) for v in losses.values()), losses
    if fam.translates or name == "autoencoder":
        out = fam.validation_prediction(batch) if name == "autoencoder" else fam.eval().predict_patch(batch["source"])
        assert out.dtype == torch.float32


def test_planned_batch_sizes_come_from_each_familys_section(demo_planned) -> None:
    import copy

    from autotrans.families.base import get_family
    from autotrans.planning.plans import Plans

    data = copy.deepcopy(demo_planned[0].data)
    fams = data["configurations"]["3d_fullres"]["families"]
    for i, name in enumerate(["pix2pix", "autoencoder", "ldm_prior", *LATENT]):
        fams[name]["batch_size"] = 3 + i
    cfg = Plans(data).configuration("3d_fullres")
    assert [get_family(n).planned_batch_size(cfg) for n in ["pix2pix", "autoencoder", "ldm_prior", *LATENT]] == \
        list(range(3, 10))

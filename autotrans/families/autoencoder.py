"""The 3D KL autoencoders every latent model works in (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", Sec. 3 and App. G).

One autoencoder per modality — ``ae_source`` (all source channels) and ``ae_target`` — each with its own
3D PatchGAN (MONAI's PatchDiscriminator). Objective per autoencoder, as in the LDM paper's first stage:
``|x - D(E(x))|_1 + kl_weight * KL(q(z|x) || N(0, I)) + adversarial_weight * LSGAN(D(x_rec))``, the
adversarial term switched on after ``adversarial_start`` of the epochs (a discriminator on blurry early
reconstructions only destabilises). A perceptual term is used only with user-supplied 3D feature weights
(``perceptual_weights``; there is no licensed 3D LPIPS to ship). The latent scaling factor (1/std of the
posterior means of the last training epoch) is stored in each autoencoder's state.

Trained alone with ``autotrans_train D CONFIG autoencoder F`` or automatically before the first latent model of
a fold; the latent models copy the weights into their own checkpoints, so their results folders stay
self-contained for inference.
"""
from __future__ import annotations

from typing import Any

import torch

from autotrans.errors import ConfigurationError
from autotrans.families.base import Family, register_family, unwrap
from autotrans.families.latent import latent_section, pad_to_multiple
from autotrans.families.losses import evaluating, feature_l1, lsgan_loss, resolved, set_requires_grad
from autotrans.families.srgan import load_feature_network
from autotrans.networks.latent import build_autoencoder, build_latent_discriminator, latent_divisor

DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "lr_d": 1e-4,
    "betas": (0.5, 0.9),
    "kl_weight": 1e-6,
    "adversarial_weight": 0.01,
    "adversarial_start": 0.25,  # fraction of num_epochs before the adversarial term starts
    "perceptual_weight": 0.1,
    "perceptual_weights": None,
    "num_epochs": 1000,
}
MODALITIES = ("source", "target")


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels, averaged over the batch (VAE, Kingma 2014, App. B)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


@register_family("autoencoder")
class AutoencoderFamily(Family):
    """Source and target KL autoencoders with their PatchGANs; reconstructs, does not translate."""

    translates = False

    batch_size_section = ("latent", "autoencoder")

    def build(self) -> None:
        section = latent_section(self)
        n_src = len(self.plans.source_modalities)
        self.divisor = latent_divisor(section)
        ae = section["autoencoder"]
        self.ae_source = build_autoencoder(ae, n_src).to(self.device)
        self.ae_target = build_autoencoder(ae, 1).to(self.device)
        self.disc_source = build_latent_discriminator(ae, n_src).to(self.device)
        self.disc_target = build_latent_discriminator(ae, 1).to(self.device)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self.feature_net: torch.nn.Module | None = None

    def resolved_hparams(self) -> dict[str, Any]:
        return resolved(self, DEFAULTS)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"ae_source": self.ae_source, "ae_target": self.ae_target,
                "disc_source": self.disc_source, "disc_target": self.disc_target}

    def configure_optimizers(self) -> None:
        hp = self.resolved_hparams()
        betas = tuple(float(b) for b in hp["betas"])
        self._optimizers = {}
        for m in MODALITIES:
            self._optimizers[f"ae_{m}"] = torch.optim.Adam(getattr(self, f"ae_{m}").parameters(), lr=float(hp["lr"]),
                                                           betas=betas)
            self._optimizers[f"disc_{m}"] = torch.optim.Adam(getattr(self, f"disc_{m}").parameters(),
                                                             lr=float(hp["lr_d"]), betas=betas)
        if hp["perceptual_weights"]:
            self.feature_net = load_feature_network(hp["perceptual_weights"], self.device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_end(epoch, num_epochs)
        for m in MODALITIES:
            unwrap(getattr(self, f"ae_{m}")).update_scale()

    def adversarial_on(self) -> bool:
        start = float(self.hparam("adversarial_start", DEFAULTS["adversarial_start"]))
        return self.epoch >= round(start * int(self.hparam("num_epochs", DEFAULTS["num_epochs"])))

    def _train_one(self, m: str, x: torch.Tensor) -> dict[str, float]:
        ae, disc = getattr(self, f"ae_{m}"), getattr(self, f"disc_{m}")
        hp = self.resolved_hparams()
        with self.autocast():
            rec, mu, sigma = ae(x)
        unwrap(ae).record(mu)
        l1 = (rec.float() - x.float()).abs().mean()
        kl = kl_divergence(mu, sigma)
        loss = l1 + float(hp["kl_weight"]) * kl
        out = {f"{m}/l1": l1.item(), f"{m}/kl": kl.item()}
        if self.feature_net is not None and x.shape[1] == 1:
            with torch.no_grad():
                ref = self.feature_net(x)
            perc = feature_l1(ref, self.feature_net(rec.float()))
            loss = loss + float(hp["perceptual_weight"]) * perc
            out[f"{m}/perceptual"] = perc.item()
        adv = self.adversarial_on()
        if adv:
            set_requires_grad([disc], False)
            with self.autocast():
                g_adv = lsgan_loss(unwrap(disc)(rec)[-1], True)
            set_requires_grad([disc], True)
            loss = loss + float(hp["adversarial_weight"]) * g_adv
            out[f"{m}/g_adv"] = g_adv.item()
        self.optimize(loss, self._optimizers[f"ae_{m}"], ae.parameters())
        if adv:
            with self.autocast():
                d_out = disc(torch.cat([x, rec.detach().to(x.dtype)]))[-1]
            n = x.shape[0]
            loss_d = 0.5 * (lsgan_loss(d_out[:n], True) + lsgan_loss(d_out[n:], False))
            self.optimize(loss_d, self._optimizers[f"disc_{m}"], disc.parameters())
            out[f"{m}/d"] = loss_d.item()
        return out

    def _padded(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        air = -1.0
        return {m: pad_to_multiple(batch[m].to(self.device), self.divisor, air)[0] for m in MODALITIES}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        x = self._padded(batch)
        out: dict[str, float] = {}
        for m in MODALITIES:
            out.update(self._train_one(m, x[m]))
        return out

    def reconstruct(self, m: str, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean reconstruction of a normalized patch of modality ``m`` (padded and cropped back)."""
        padded, inner = pad_to_multiple(x.to(self.device), self.divisor, -1.0)
        ae = getattr(self, f"ae_{m}")
        with torch.no_grad(), self.autocast():
            rec = unwrap(ae).decode(unwrap(ae).encode(padded))
        return rec.float()[(slice(None), slice(None), *inner)].clamp(-1.0, 1.0)

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with evaluating(list(self.networks().values())):
            return {f"{m}/l1": (self.reconstruct(m, batch[m]) - batch[m].to(self.device)).abs().mean().item()
                    for m in MODALITIES}

    def validation_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The engine's physical-unit validation error is the *target* reconstruction error: the floor every
        latent model's error sits on."""
        return self.reconstruct("target", batch["target"])

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise ConfigurationError("the autoencoder reconstructs, it does not translate: predict with a latent model "
                                 "(ldm, ldm_controlnet, bbdm, flow_matching) trained on it")

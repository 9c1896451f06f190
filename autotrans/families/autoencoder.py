"""The 3D KL autoencoder every latent model works in (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", Sec. 3 and App. G).

One single-channel autoencoder for every domain — each source channel and the target — as the LDM's first
stage is one model and the released BBDM encodes both domains with one VQGAN: a bridge or a flow between a
source and a target latent needs both in one latent space. A 3D PatchGAN (MONAI's PatchDiscriminator) judges
its reconstructions. Objective, per image, with the LDM code's effective weighting:
``mean|x - D(E(x))| + kl_weight * KL(q(z|x) || N(0, I)) / n_voxels + adversarial_weight * LSGAN(D(x_rec))``.
The LDM code sums the L1 over pixels and the KL over latent elements with ``kl_weight = 1e-6``; dividing both by
the image's voxel count keeps that ratio with a mean L1 (a KL sum next to a mean L1 would weigh it ~10^6x more,
pulling the posterior to the prior and blurring every reconstruction). The adversarial term starts after
``adversarial_start`` of the epochs (a discriminator on blurry early reconstructions only destabilises). A
perceptual term is used only with user-supplied 3D feature weights (``perceptual_weights``; there is no
licensed 3D LPIPS to ship). One optimizer step per image of a batch: the source channels, then the target. The
latent scaling factor (1/std of the posterior means of the last training epoch, all modalities) is stored in
the autoencoder's state.

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


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent elements, averaged over the batch (VAE, Kingma 2014, App. B)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2).clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


def autoencoder_loss(x: torch.Tensor, rec: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                     kl_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, mean L1, KL sum per sample): the LDM first stage's weighting with the L1 as a voxel mean, i.e.
    ``(sum L1 + kl_weight * KL) / n_voxels`` per sample."""
    l1 = (rec.float() - x.float()).abs().mean()
    kl = kl_divergence(mu, sigma)
    return l1 + kl_weight * kl / float(x[0].numel()), l1, kl


@register_family("autoencoder")
class AutoencoderFamily(Family):
    """The shared single-channel KL autoencoder with its PatchGAN; reconstructs, does not translate."""

    translates = False

    def build(self) -> None:
        section = latent_section(self)
        self.divisor = latent_divisor(section)
        ae = section["autoencoder"]
        self.ae = build_autoencoder(ae, 1).to(self.device)
        self.disc = build_latent_discriminator(ae, 1).to(self.device)
        self._optimizers: dict[str, torch.optim.Optimizer] = {}
        self.feature_net: torch.nn.Module | None = None

    def resolved_hparams(self) -> dict[str, Any]:
        return resolved(self, DEFAULTS)

    def networks(self) -> dict[str, torch.nn.Module]:
        return {"ae": self.ae, "disc": self.disc}

    def configure_optimizers(self) -> None:
        hp = self.resolved_hparams()
        betas = tuple(float(b) for b in hp["betas"])
        self._optimizers = {"ae": torch.optim.Adam(self.ae.parameters(), lr=float(hp["lr"]), betas=betas),
                            "disc": torch.optim.Adam(self.disc.parameters(), lr=float(hp["lr_d"]), betas=betas)}
        if hp["perceptual_weights"]:
            self.feature_net = load_feature_network(hp["perceptual_weights"], self.device)

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._optimizers

    def on_epoch_end(self, epoch: int, num_epochs: int) -> None:
        super().on_epoch_end(epoch, num_epochs)
        unwrap(self.ae).update_scale()

    def adversarial_on(self) -> bool:
        start = float(self.hparam("adversarial_start", DEFAULTS["adversarial_start"]))
        return self.epoch >= round(start * int(self.hparam("num_epochs", DEFAULTS["num_epochs"])))

    def _train_one(self, x: torch.Tensor) -> dict[str, float]:
        """One optimizer step of the autoencoder (and of its discriminator) on single-channel images ``x``."""
        hp = self.resolved_hparams()
        with self.autocast():
            rec, mu, sigma = self.ae(x)
        unwrap(self.ae).record(mu)
        loss, l1, kl = autoencoder_loss(x, rec, mu, sigma, float(hp["kl_weight"]))
        out = {"l1": l1.item(), "kl": kl.item()}
        if self.feature_net is not None:
            with torch.no_grad():
                ref = self.feature_net(x)
            perc = feature_l1(ref, self.feature_net(rec.float()))
            loss = loss + float(hp["perceptual_weight"]) * perc
            out["perceptual"] = perc.item()
        adv = self.adversarial_on()
        if adv:
            set_requires_grad([self.disc], False)
            with self.autocast():
                g_adv = lsgan_loss(unwrap(self.disc)(rec)[-1], True)
            set_requires_grad([self.disc], True)
            loss = loss + float(hp["adversarial_weight"]) * g_adv
            out["g_adv"] = g_adv.item()
        self.optimize(loss, self._optimizers["ae"], self.ae.parameters())
        if adv:
            with self.autocast():
                d_out = self.disc(torch.cat([x, rec.detach().to(x.dtype)]))[-1]
            n = x.shape[0]
            loss_d = 0.5 * (lsgan_loss(d_out[:n], True) + lsgan_loss(d_out[n:], False))
            self.optimize(loss_d, self._optimizers["disc"], self.disc.parameters())
            out["d"] = loss_d.item()
        return out

    def _images(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Single-channel images of a batch, padded with air: ``source_0``, ``source_1``, ..., ``target``."""
        def pad(x: torch.Tensor) -> torch.Tensor:
            return pad_to_multiple(x.to(self.device), self.divisor, -1.0)[0]

        src = batch["source"]
        return {**{f"source_{c}": pad(src[:, c:c + 1]) for c in range(src.shape[1])}, "target": pad(batch["target"])}

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, x in self._images(batch).items():
            out.update({f"{name}/{k}": v for k, v in self._train_one(x).items()})
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior-mean reconstruction of normalized single-channel images (padded and cropped back)."""
        padded, inner = pad_to_multiple(x.to(self.device), self.divisor, -1.0)
        ae = unwrap(self.ae)
        with torch.no_grad(), self.autocast():
            rec = ae.decode(ae.encode(padded))
        return rec.float()[(slice(None), slice(None), *inner)].clamp(-1.0, 1.0)

    def validation_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        with evaluating(list(self.networks().values())):
            src = batch["source"].to(self.device)
            return {"source/l1": float(torch.stack([(self.reconstruct(src[:, c:c + 1]) - src[:, c:c + 1]).abs().mean()
                                                    for c in range(src.shape[1])]).mean()),
                    "target/l1": (self.reconstruct(batch["target"]) - batch["target"].to(self.device)).abs().mean().item()}

    def validation_prediction(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The engine's physical-unit validation error is the *target* reconstruction error: the floor every
        latent model's error sits on."""
        return self.reconstruct(batch["target"])

    def predict_patch(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        raise ConfigurationError("the autoencoder reconstructs, it does not translate: predict with a latent model "
                                 "(ldm, ldm_controlnet, bbdm, flow_matching) trained on it")

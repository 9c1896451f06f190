"""Generator families (regression, Pix2Pix, CycleGAN, SRGAN, latent models), one small strategy module each."""
from autotrans.families.base import Family, available_families, get_family, register_family
from autotrans.families import cyclegan, pix2pix, srgan  # noqa: F401  (importing registers the GAN families)
from autotrans.families import regression  # noqa: F401  (the masked-L1 U-Net, nnsyn's SynthRAD2025 baseline)
from autotrans.families import autoencoder, bbdm, flow_matching, ldm, ldm_controlnet  # noqa: F401  (latent family)

__all__ = ["Family", "available_families", "get_family", "register_family"]

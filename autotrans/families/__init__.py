"""Generator families (Pix2Pix, CycleGAN, SRGAN, latent models), one small strategy module each."""
from autotrans.families.base import Family, available_families, get_family, register_family
from autotrans.families import cyclegan, pix2pix, srgan  # noqa: F401  (importing registers the GAN families)

__all__ = ["Family", "available_families", "get_family", "register_family"]

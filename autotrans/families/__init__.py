"""Generator families (Pix2Pix, CycleGAN, SRGAN, latent models), one small strategy module each."""
from autotrans.families.base import Family, available_families, get_family, register_family

__all__ = ["Family", "available_families", "get_family", "register_family"]

"""Network builders from a plan configuration: the planned U-Net generator, PatchGAN, SRGAN networks."""
from autotrans.networks.patchgan import PatchGAN3d, build_patchgan, receptive_field
from autotrans.networks.srgan import (
           ResidualGenerator,
           VGGDiscriminator,
           build_srgan_generator,
           build_vgg_discriminator,
)
from autotrans.networks.unet import PlannedGenerator, build_planned_unet, resolve_import

__all__ = ["PatchGAN3d", "PlannedGenerator", "ResidualGenerator", "VGGDiscriminator", "build_patchgan",
           "build_planned_unet", "build_srgan_generator", "build_vgg_discriminator", "receptive_field",
           "resolve_import"]

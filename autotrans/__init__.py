"""autotrans: self-configuring 3D cross-modality medical image translation (nnU-Net style)."""
from __future__ import annotations

__version__ = "0.1.0"

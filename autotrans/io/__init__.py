"""Reading and writing volumes with their physical geometry."""
from autotrans.io.image_io import (
    SUPPORTED_ENDINGS,
    Geometry,
    ImageReadError,
    file_ending,
    read_image,
    read_geometry,
    write_image,
)

__all__ = [
    "SUPPORTED_ENDINGS",
    "Geometry",
    "ImageReadError",
    "file_ending",
    "read_image",
    "read_geometry",
    "write_image",
]

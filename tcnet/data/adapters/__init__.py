"""Dataset adapters: one module per dataset, each recognising its official layout.

``discover(dataset, root) -> list[Sample]``, ``load_mask(sample)``, ``load_fov(sample, image)``;
``get_adapter(name)`` for the adapter object. Layouts, ignore rules and mask encodings:
``docs/datasets.md``.
"""

from tcnet.data.adapters.base import (
    Adapter,
    LayoutError,
    MissingImageError,
    MissingMaskError,
    Sample,
    binarize_mask_file,
    binarize_mask_image,
    discover,
    get_adapter,
    list_adapters,
    load_fov,
    load_mask,
    register_adapter,
)

# Importing the modules registers the adapters (order = tcnet.config.DATASETS).
from tcnet.data.adapters import isic2017, isic2018, ph2, drive, chase_db1  # noqa: E402,F401  isort: skip

__all__ = [
    "Adapter", "LayoutError", "MissingImageError", "MissingMaskError", "Sample", "binarize_mask_file", "binarize_mask_image",
    "discover", "get_adapter", "list_adapters", "load_fov", "load_mask", "register_adapter",
]

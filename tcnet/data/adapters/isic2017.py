"""ISIC 2017 Part 1 (lesion segmentation): official train / val / test folders as unzipped.

Recognised under the root (up to three folders deep, so dataset-ninja's doubled
``Task1/ISIC-2017_Training_Data/ISIC-2017_Training_Data/`` works too)::

    ISIC-2017_Training_Data/ISIC_0000000.jpg         (+ *_superpixels.png, *_metadata.csv: ignored)
    ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png
    ISIC-2017_Validation_Data/ ...  ISIC-2017_Validation_Part1_GroundTruth/ ...
    ISIC-2017_Test_v2_Data/ ...     ISIC-2017_Test_v2_Part1_GroundTruth/ ...

Training is required; validation and test are optional. ``official_split``: train | val | test.
"""

from __future__ import annotations

from tcnet.data.adapters._isic import IsicAdapter
from tcnet.data.adapters.base import register_adapter


@register_adapter
class Isic2017(IsicAdapter):
    name = "isic2017"
    title = "ISIC 2017 Part 1"
    folders = {
        "train": ("ISIC-2017_Training_Data", "ISIC-2017_Training_Part1_GroundTruth"),
        "val": ("ISIC-2017_Validation_Data", "ISIC-2017_Validation_Part1_GroundTruth"),
        "test": ("ISIC-2017_Test_v2_Data", "ISIC-2017_Test_v2_Part1_GroundTruth"),
    }
    layout = """
data/isic2017/
  ISIC-2017_Training_Data/ISIC_0000000.jpg, ...              (required)
  ISIC-2017_Training_Part1_GroundTruth/ISIC_0000000_segmentation.png, ...
  ISIC-2017_Validation_Data/ + ISIC-2017_Validation_Part1_GroundTruth/   (optional)
  ISIC-2017_Test_v2_Data/ + ISIC-2017_Test_v2_Part1_GroundTruth/         (optional)
"""

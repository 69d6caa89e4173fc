"""ISIC 2018 Task 1 (lesion boundary segmentation): Task1-2 input folders + Task 1 ground truth.

Recognised under the root (up to three folders deep)::

    ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg
    ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png   (+ LICENSE.txt, ATTRIBUTION.txt: ignored)
    ISIC2018_Task1-2_Validation_Input/ + ISIC2018_Task1_Validation_GroundTruth/   (optional)
    ISIC2018_Task1-2_Test_Input/ + ISIC2018_Task1_Test_GroundTruth/               (optional)

Training is required (the k-fold cross-validation runs over it). ``official_split``: train | val | test.
"""

from __future__ import annotations

from tcnet.data.adapters._isic import IsicAdapter
from tcnet.data.adapters.base import register_adapter


@register_adapter
class Isic2018(IsicAdapter):
    name = "isic2018"
    title = "ISIC 2018 Task 1"
    folders = {
        "train": ("ISIC2018_Task1-2_Training_Input", "ISIC2018_Task1_Training_GroundTruth"),
        "val": ("ISIC2018_Task1-2_Validation_Input", "ISIC2018_Task1_Validation_GroundTruth"),
        "test": ("ISIC2018_Task1-2_Test_Input", "ISIC2018_Task1_Test_GroundTruth"),
    }
    layout = """
data/isic2018/
  ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg, ...        (required)
  ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png, ...
  ISIC2018_Task1-2_Validation_Input/ + ISIC2018_Task1_Validation_GroundTruth/   (optional)
  ISIC2018_Task1-2_Test_Input/ + ISIC2018_Task1_Test_GroundTruth/               (optional)
"""

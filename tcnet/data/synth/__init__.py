"""Synthetic look-alikes of the five datasets, written in their official layouts (docs/datasets.md).

``skin.make_lesion`` (ISIC/PH2), ``retina.make_fundus`` (DRIVE/CHASE_DB1), ``writers.write_dataset``
(one writer per layout). Deterministic: same seed, same bytes. Not real data.
"""

from tcnet.data.synth.writers import SPECS, write_dataset

__all__ = ["SPECS", "write_dataset"]

"""Component ``gather``: the evaluations of one runs loop, and of the loops before it, in one tree.

The pipeline has one runs loop per pair of training and evaluated dataset (a train task downloads
only its own dataset's arrays), and ``dsl.Collected`` collects one loop: each loop but the last ends
in a ``gather`` that merges its evaluations with the previous ``gather``'s (``prior``); compare
takes the last loop's list and the last ``gather``. A clash (one path, two different files) fails.
"""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def gather(evals: Input[List[Dataset]], merged: Output[Dataset], prior: Optional[Input[Dataset]] = None):
    """``<merged>/<experiment>/<run_id>/``: every evaluation folder of this loop and of ``prior``."""
    from tcnet.utils.trees import merge_evaluations

    tree = merge_evaluations(merged.path, getattr(prior, "path", None), *(e.path for e in evals))
    merged.metadata["runs"] = sum(p.is_dir() for p in tree.glob("*/*"))  # <experiment>/<run_id>/ folders

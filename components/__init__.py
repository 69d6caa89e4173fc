"""Kubeflow components: one per pipeline stage, each a few lines that call the stage's ``run()``
(and ``data_params``, which hands the cached data stages only the params sections they read, and
``gather``, which merges the evaluations of one runs loop with the loops' before it).

Every component is a Python component on the project image (``base_image=components.image.IMAGE``,
nothing pip-installed at run time): the body imports ``tcnet`` (installed in the image) and calls the
same ``tcnet.stages.<stage>.run`` as the ``tcnet`` CLI and ``dvc repro`` (train: the ``tcnet train``
command itself, for its ``--nproc``). No component has logic of its own. The same functions run in
pods and, unchanged, under ``kfp.local.SubprocessRunner(use_venv=False)``.
"""

from components.compare import compare
from components.data_params import data_params
from components.evaluate import evaluate
from components.fetch_data import fetch_data
from components.gather import gather
from components.image import IMAGE
from components.preprocess import preprocess
from components.split import split
from components.train import train

__all__ = ["IMAGE", "compare", "data_params", "evaluate", "fetch_data", "gather", "preprocess", "split", "train"]

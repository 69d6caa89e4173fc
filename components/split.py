"""Component ``split``: ``tcnet.stages.split.tracked_run`` on the preprocessed data's index (its
manifest), logged to MLflow's ``tcnet/data`` like the CLI's."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def split(params_yaml: str, index: Input[Dataset], splits: Output[Dataset], embedded: str = ""):
    """``<splits>/<dataset>.json``: the folds and the test list (docs/architecture.md, "split");
    ``embedded``: the dataset's user split file, read into the pipeline when it was compiled."""
    import os

    import yaml
    from tcnet.config import Params, from_dict
    from tcnet.stages.split import tracked_run

    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    os.environ["TCNET_DATA_HASH"] = index.metadata.get("data_md5", "")  # no checkout here: fetch_data's read
    summary = tracked_run(params, index.path, splits.path, embedded=embedded)
    splits.metadata["folds"] = {d: len(s["folds"]) for d, s in summary.items()}

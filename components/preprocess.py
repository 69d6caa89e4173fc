"""Component ``preprocess``: ``tcnet.stages.preprocess.tracked_run`` on the fetched raw data (logged
to MLflow's ``tcnet/data`` like the CLI's).

Two outputs: ``preprocessed`` (the arrays, manifest and statistics: what train reads) and ``index``
(the manifest and statistics alone, kilobytes: what split and evaluate read). A task downloads its
input artifacts whole, so split and evaluate pods get the index, never the arrays.
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess(params_yaml: str, raw: Input[Dataset], preprocessed: Output[Dataset], index: Output[Dataset]):
    """Resized arrays, manifest and class statistics (docs/architecture.md, "preprocess"); ``index``: the latter two."""
    import os

    import yaml
    from tcnet.config import Params, from_dict
    from tcnet.stages.preprocess import tracked_run
    from tcnet.utils.trees import copy_index

    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    os.environ["TCNET_DATA_HASH"] = raw.metadata.get("data_md5", "")  # no checkout here: fetch_data's read
    summary = tracked_run(params, raw.path, preprocessed.path)
    preprocessed.metadata["images"] = {d: s["n"] for d, s in summary["datasets"].items()}
    preprocessed.metadata["data_md5"] = raw.metadata.get("data_md5", "")  # passed on for the runs' provenance
    copy_index(preprocessed.path, index.path)
    index.metadata.update(preprocessed.metadata)

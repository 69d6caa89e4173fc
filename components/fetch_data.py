"""Component ``fetch_data``: the DVC-versioned raw data at a git revision, from the DVC remote.

A pod has no checkout, so the data is read through DVC's filesystem against the repository URL:
DVC clones the git repository at ``rev`` (a tag or commit SHA -- pin one, the task is cached),
reads ``<preprocess.raw_dir>.dvc`` there (``data.dvc``: the folder ``dvc.yaml`` reads too) and
downloads only the datasets that ``params_yaml`` preprocesses from the remote named in
``.dvc/config`` (credentials from the environment: a Kubernetes secret on a cluster, see
pipeline/pipeline.py). Locally, ``repo_url`` may be a path and ``rev`` empty: the working tree.
"""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_data(params_yaml: str, repo_url: str, rev: str, raw: Output[Dataset], remote: str = ""):
    """Write ``<raw>/<dataset>/`` for every dataset in ``preprocess.datasets``."""
    import yaml
    from tcnet.config import Params, from_dict
    from tcnet.data.fetch import fetch_datasets, open_repo
    from tcnet.provenance import md5_of_dvc_file, without_credentials

    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    data_path = params.preprocess.repo_data_path()  # "data": the DVC-tracked folder in the repository
    fs = open_repo(repo_url, rev, remote)
    fetch_datasets(fs, data_path, params.preprocess.datasets, raw.path)
    # The URL without a user/token part (artifact metadata is shown in the UI, kept in ML Metadata), and
    # the data's DVC hash at that revision: the pods after this one have no checkout to read it from.
    raw.metadata.update({"repo_url": without_credentials(repo_url), "rev": rev or "(working tree)",
                         "data_md5": md5_of_dvc_file(f"{data_path}.dvc", fs), "datasets": list(params.preprocess.datasets)})

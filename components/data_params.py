"""Component ``data_params``: the part of ``params_yaml`` that each data stage reads.

``fetch_data``, ``preprocess`` and ``split`` are cached, and KFP keys a cache entry on every input
value. Given the whole params they would miss the cache (and fetch every dataset again) after any
edit to ``train``, ``evaluate`` or ``experiments``. This checks the whole params first (a bad file
fails here, in the first pod) and hands each data task only what it reads, defaults written out:
``fetch_data`` the data's folder and datasets, ``preprocess`` its section, ``split`` its section
(``tcnet.config.data_task_params``). With ``dataset``: for that dataset alone -- the pipeline
fetches, preprocesses and splits each dataset in tasks of its own, each cached on its own settings.
"""

from typing import NamedTuple

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_params(params_yaml: str, dataset: str = "") -> NamedTuple("Outputs", fetch_data=str, preprocess=str, split=str):
    """One-line YAML for each data task, from the validated params (for ``dataset``)."""
    from collections import namedtuple
    import yaml
    from tcnet.config import Params, data_task_params, flow_yaml, from_dict

    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    sections = data_task_params(params, dataset)
    return namedtuple("Outputs", list(sections))(*(flow_yaml(v, sort_keys=True) for v in sections.values()))

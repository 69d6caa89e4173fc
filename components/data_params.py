"""Component ``data_params``: the part of ``params_yaml`` that the data stages read.

``fetch_data``, ``preprocess`` and ``split`` are cached, and KFP keys a cache entry on every input
value. Given the whole params they would miss the cache (and fetch every dataset again) after any
edit to ``train``, ``evaluate`` or ``experiments``. This checks the whole params first (a bad file
fails here, in the first pod) and hands on only ``preprocess`` and ``split``, defaults written out.
With ``dataset`` it hands on those sections for that dataset alone: the pipeline fetches,
preprocesses and splits each dataset in tasks of its own, each cached on its own settings.
"""

from kfp import dsl

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def data_params(params_yaml: str, dataset: str = "") -> str:
    """One-line YAML of the ``preprocess`` and ``split`` sections of the validated params (for ``dataset``)."""
    import yaml
    from tcnet.config import Params, data_stage_params, flow_yaml, from_dict

    params = from_dict(Params, yaml.safe_load(params_yaml)).validate()
    return flow_yaml(data_stage_params(params, dataset), sort_keys=True)

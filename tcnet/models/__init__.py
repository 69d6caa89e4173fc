"""The networks: TCNet (large-kernel CNN + Transformer branches, fused per scale) and the baselines.

Build models by name with :func:`create_model`; :func:`list_models` names them all.
"""

from tcnet.models.lk_conv import LargeKernelDWConv, choose_impl, set_lk_impl
from tcnet.models.registry import create_model, list_models, model_options, register_model
from tcnet.models.tcnet import ATTENTION_PLACEMENTS, TCNet, TCNetConfig

__all__ = [
    "ATTENTION_PLACEMENTS",
    "LargeKernelDWConv",
    "TCNet",
    "TCNetConfig",
    "choose_impl",
    "create_model",
    "list_models",
    "model_options",
    "register_model",
    "set_lk_impl",
]

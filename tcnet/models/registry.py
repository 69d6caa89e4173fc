"""Model registry: ``@register_model`` builders, ``create_model(name, **overrides)``, ``list_models()``.

Every builder takes ``num_classes`` (default 1) and keyword options only; an unknown name or an
unknown option raises ``ValueError`` naming the valid ones. Baselines are registered by reference
(``"module:function"``) and imported on first use, so that ``list_models()`` and TCNet do not pay
for importing segmentation-models-pytorch and torchvision.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Callable, Union

from torch import nn

from tcnet.config import did_you_mean
from tcnet.models.tcnet import TCNet, TCNetConfig

Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Union[Builder, str]] = {}


def register_model(fn: Builder | str | None = None, *, name: str | None = None):
    """Register a builder under ``name`` (default: the function's name).

    Use as ``@register_model``, ``@register_model(name="x")``, or
    ``register_model("package.module:function", name="x")`` for a builder imported on first use.
    """

    def wrap(f: Builder | str):
        key = name or (f.rsplit(":", 1)[1] if isinstance(f, str) else f.__name__)
        if key in _REGISTRY and _REGISTRY[key] is not f:
            raise ValueError(f"model {key!r} is already registered")
        _REGISTRY[key] = f
        return f

    return wrap(fn) if fn is not None else wrap


def list_models() -> list[str]:
    """Registered model names: the TCNet variants, then the baselines (registration order)."""
    return list(_REGISTRY)


def get_builder(name: str) -> Builder:
    """The builder function of ``name`` (imported now if registered by reference)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}{did_you_mean(name, _REGISTRY)}; valid: {', '.join(_REGISTRY)}")
    fn = _REGISTRY[name]
    if isinstance(fn, str):
        module, attr = fn.rsplit(":", 1)
        fn = getattr(importlib.import_module(module), attr)
        _REGISTRY[name] = fn
    return fn


def model_options(name: str) -> list[str]:
    """The keyword options ``create_model(name, ...)`` accepts."""
    fn = get_builder(name)
    opts = getattr(fn, "options", None)
    if opts is not None:
        return list(opts)
    return list(inspect.signature(fn).parameters)


def _options_ok(name: str, options: dict) -> bool:
    try:
        check_options(name, options)
    except ValueError:
        return False
    return True


def check_runs_models(params, path=None, experiments=None) -> None:
    """Every run's model of ``params`` (of ``experiments`` only, if given) is registered and takes its
    overrides; else a ``ConfigError`` naming the params file and the key. ``tcnet experiments`` and
    the train stage check before any training, not when the run comes up hours later."""
    from tcnet.config import ConfigError, expand_runs

    built: set[tuple[str, str]] = set()
    for exp_id, exp in params.experiments.items():
        if experiments is not None and exp_id not in experiments:
            continue
        for spec in expand_runs(params, exp_id):
            variant = next(v for v in exp.runs if v.name == spec.variant)
            where = f"experiments.{exp_id}.runs.{variant.name}" if variant.model else f"experiments.{exp_id}"
            prefix = f"{path}: " if path else ""
            try:
                get_builder(spec.model)
            except ValueError as e:
                raise ConfigError(f"{prefix}{where}.model: {e}") from None
            # where the options came from: the experiment's, the run's, or both merged
            sources = ((f"experiments.{exp_id}.model_overrides", exp.model_overrides),
                       (f"experiments.{exp_id}.runs.{variant.name}.model_overrides", variant.model_overrides))
            paths = [p for p, options in sources if options]
            try:
                check_options(spec.model, spec.model_kwargs)
            except ValueError as e:  # the key that holds the unknown option, not only the experiment
                held = [p for p, options in sources if options and not _options_ok(spec.model, options)]
                if variant.model and held == [sources[0][0]]:  # the run's own model rejects the experiment's option
                    raise ConfigError(f"{prefix}{where}.model: {e} (given by {held[0]})") from None
                raise ConfigError(f"{prefix}{' + '.join(held or paths) or where}: {e}") from None
            key = (spec.model, repr(sorted(spec.model_kwargs.items())))
            if key not in built:  # the options' values too (a placement, an encoder name): build it, no memory
                built.add(key)
                problem = _build_problem(spec.model, spec.model_kwargs)
                if problem:
                    raise ConfigError(f"{prefix}{' + '.join(paths) or where + '.model'}: model {spec.model!r} cannot "
                                      f"be built with {dict(spec.model_kwargs)}: {problem}")


def _build_problem(name: str, overrides, limit: int = 300) -> str:
    """Why ``create_model(name, **overrides)`` fails ("" if it builds), built on the meta device: the
    modules and their checks run, no weight is allocated (milliseconds, a few MB)."""
    import torch

    try:
        with torch.device("meta"):
            create_model(name, **overrides)
    except Exception as e:  # noqa: BLE001 - any builder's own complaint (ValueError, smp's KeyError, ...)
        text = (str(e).strip().strip('"').splitlines() or [type(e).__name__])[0]
        return text if len(text) <= limit else text[:limit] + " ..."
    return ""


def check_options(name: str, overrides) -> None:
    """``ValueError`` naming the valid options when ``create_model(name, **overrides)`` would get one it lacks."""
    valid = model_options(name)
    unknown = [k for k in overrides if k not in valid]
    if unknown:
        hints = "".join(did_you_mean(k, valid) for k in unknown)
        raise ValueError(
            f"model {name!r} has no option(s) {', '.join(map(repr, unknown))}{hints}; valid: {', '.join(valid)}"
        )


def create_model(name: str, **overrides) -> nn.Module:
    """Build the registered model ``name``; ``overrides`` are its keyword options (``num_classes``, ...)."""
    check_options(name, overrides)
    return get_builder(name)(**overrides)


# ----------------------------------------------------------------------------------------------
# TCNet variants: one factory, three sizes (any TCNetConfig field can be overridden)
# ----------------------------------------------------------------------------------------------

TCNET_OPTIONS = tuple(f.name for f in dataclasses.fields(TCNetConfig))


def _variant(name: str, base_channels: int, lkm_depths: tuple[int, ...], etm_depths: tuple[int, ...], doc: str):
    def build(**overrides) -> TCNet:
        cfg = TCNetConfig(base_channels=base_channels, lkm_depths=lkm_depths, etm_depths=etm_depths)
        return TCNet(cfg, **overrides)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    build.options = TCNET_OPTIONS
    return register_model(build)


tcnet_tiny = _variant("tcnet_tiny", 16, (1, 1, 1, 1), (1, 1, 1, 1), "C = 16, LKM/ETM [1,1,1,1]: tests, CPU demo.")
tcnet_small = _variant("tcnet_small", 32, (1, 1, 2, 1), (1, 1, 2, 1), "C = 32, LKM/ETM [1,1,2,1]: CPU experiments.")
tcnet_base = _variant("tcnet_base", 64, (2, 2, 4, 2), (1, 1, 2, 1), "C = 64, LKM [2,2,4,2], ETM [1,1,2,1]: GPU, paper.")

# ----------------------------------------------------------------------------------------------
# Baselines (trained from scratch; no weights are downloaded)
# ----------------------------------------------------------------------------------------------

register_model("tcnet.models.baselines.fcn:fcn")
register_model("tcnet.models.baselines.smp_models:unet")
register_model("tcnet.models.baselines.smp_models:unetpp")
register_model("tcnet.models.baselines.unet3p:unet3p")
register_model("tcnet.models.baselines.smp_models:deeplabv3")
register_model("tcnet.models.baselines.smp_models:deeplabv3p")
register_model("tcnet.models.baselines.cenet:cenet")

"""tcnet: TCNet (Li 2025) for medical image segmentation -- library first, with a CLI and pipelines."""

__version__ = "0.1.0"


def create_model(name: str, **overrides):
    """Build a registered model (TCNet variant or baseline) by name; see :func:`list_models`."""
    from tcnet.models.registry import create_model as _create

    return _create(name, **overrides)


def list_models() -> list[str]:
    """Names of every registered model."""
    from tcnet.models.registry import list_models as _list

    return _list()


__all__ = ["create_model", "list_models", "__version__"]

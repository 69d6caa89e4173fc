"""TCNet as an MLflow pyfunc model: what gets registered (``tcnet promote``) and served.

The model's one artifact is the TCNet checkpoint (``checkpoint``); the tcnet package travels with it
as ``code_paths`` (so the served model runs the code it was logged with), and the model is logged
"from code" (:data:`MODEL_SCRIPT`), so loading it unpickles nothing. Serving decodes each
image with the same :func:`tcnet.data.io.read_image` and preprocesses it with the same
:func:`tcnet.data.transforms.prepare_image` as ``tcnet predict`` and training.

Request (``POST /invocations``, ``Content-Type: application/json``), one row per image::

    {"dataframe_split": {"columns": ["image"], "data": [["<base64 PNG/JPEG/BMP/TIFF bytes>"], ...]},
     "params": {"threshold": 0.5}}

(``{"dataframe_records": [{"image": "<b64>"}]}`` and ``{"inputs": {"image": ["<b64>", ...]}}`` are
the same table; ``params`` is optional.) Response, one record per image, in order::

    {"predictions": [{"mask": "<base64 PNG, 8-bit 0/255, the input's size>", "width": 767,
                      "height": 1022, "foreground_fraction": 0.21}]}

Serve with ``mlflow models serve -m models:/tcnet@champion --env-manager local --host 127.0.0.1
--port 5001`` (``docs/usage.md``). The device is ``TCNET_DEVICE``, else the model config's
``device`` (logged as ``auto``: CUDA when available; ``mlflow.pyfunc.load_model(uri,
model_config={"device": "cpu", "batch_size": 4})`` overrides it, and the batch).
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from tcnet.tools.model_source import CHECKPOINT_ARTIFACT
from tcnet.tools.predict import example_image

MODEL_SCRIPT = (
    "import mlflow\n"
    "from tcnet.tools.serving import TCNetSegmenter\n"
    "mlflow.models.set_model(TCNetSegmenter())\n"
)
INPUT_COLUMN = "image"
OUTPUT_COLUMNS = ("mask", "width", "height", "foreground_fraction")
DEFAULT_THRESHOLD = 0.5
# Packages the served model imports (pinned to the versions it was logged with).
RUNTIME_PACKAGES = (
    "mlflow", "torch", "numpy", "pandas", "pillow", "tifffile", "opencv-python-headless", "pyyaml",
    "segmentation-models-pytorch", "timm",
)


def encode_png(arr: np.ndarray) -> str:
    """uint8 array -> base64 PNG text."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    """base64 image text -> numpy array (as stored: a mask comes back uint8 ``H x W``)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(text))))


def decode_image(data: str | bytes, where: str = "image") -> np.ndarray:
    """base64 text (or a ``data:`` URL, or raw bytes) of an image file -> uint8 ``H x W x 3`` via
    ``read_image``; :class:`~tcnet.data.io.InvalidInputError` naming ``where`` otherwise."""
    from tcnet.data.io import InvalidInputError, read_image

    if isinstance(data, str):
        text = data.strip()
        if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
            text = text.split(",", 1)[1]
        text = "".join(text.split())  # line-wrapped base64 (base64.encodebytes, GNU base64) is fine
        try:
            if "-" in text or "_" in text:  # the URL-safe alphabet
                raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            else:  # padding restored where a client dropped it (JWT-style encoders do)
                raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
        except ValueError:
            raise InvalidInputError(f"{where}: not valid base64 text") from None
    elif isinstance(data, (bytes, bytearray)):
        raw = bytes(data)
    else:
        raise InvalidInputError(f"{where}: expected base64 text, got {type(data).__name__}")
    if not raw:
        raise InvalidInputError(f"{where}: empty image")
    suffix = ".tif" if raw[:4] in (b"II*\x00", b"MM\x00*") else ".img"
    with tempfile.TemporaryDirectory(prefix="tcnet-serve-") as tmp:
        path = Path(tmp) / f"{where.replace(' ', '_')}{suffix}"
        path.write_bytes(raw)
        try:
            return read_image(path, exif_orientation=True)  # the mask fits the image as shown
        except InvalidInputError as e:
            # The temp path means nothing to the client: name the row instead.
            raise InvalidInputError(str(e).replace(str(path), where)) from None


DEFAULT_MODEL_CONFIG = {"device": "auto", "batch_size": 8}


class TCNetSegmenter(mlflow.pyfunc.PythonModel):
    """Binary segmentation of base64-encoded images with a TCNet checkpoint (see module docstring)."""

    def load_context(self, context) -> None:
        from tcnet.checkpoint import load_model
        from tcnet.tools.model_source import resolve_device
        from tcnet.tools.predict import image_size_of

        config = {**DEFAULT_MODEL_CONFIG, **(getattr(context, "model_config", None) or {})}
        env = os.environ.get("TCNET_DEVICE")
        self.device = resolve_device(env or config["device"],
                                     option="TCNET_DEVICE" if env else "the model config's device")
        self.model, self.meta = load_model(context.artifacts[CHECKPOINT_ARTIFACT], self.device)
        self.model.eval()
        self.image_size = image_size_of(self.meta)
        self.batch_size = int(config["batch_size"])

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException

        from tcnet.data.io import InvalidInputError
        from tcnet.tools.predict import binarize, predict_probs

        threshold = float((params or {}).get("threshold", DEFAULT_THRESHOLD))
        if not 0.0 <= threshold <= 1.0:
            raise MlflowException.invalid_parameter_value(f"threshold must be in [0, 1], got {threshold}")
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if INPUT_COLUMN not in model_input.columns:
            raise MlflowException.invalid_parameter_value(
                f"expected a column {INPUT_COLUMN!r} of base64-encoded images, got columns {list(model_input.columns)}"
            )
        # A dict of lists ({"image": [b64, b64]}) reaches here as ONE row holding the list (MLflow's
        # schema enforcement): each element is an image, as if each were a row of its own.
        values = []
        for value in model_input[INPUT_COLUMN].tolist():
            values.extend(value.tolist() if isinstance(value, np.ndarray) else
                          value if isinstance(value, (list, tuple)) else [value])
        images = []
        for i, value in enumerate(values):
            try:
                images.append(decode_image(value, where=f"row {i}"))
            except InvalidInputError as e:
                raise MlflowException.invalid_parameter_value(str(e)) from None
        rows = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            for img, prob in zip(chunk, predict_probs(self.model, chunk, self.image_size, self.device)):
                mask = binarize(prob, threshold)
                rows.append({
                    "mask": encode_png(mask), "width": int(mask.shape[1]), "height": int(mask.shape[0]),
                    "foreground_fraction": float((mask > 0).mean()),
                })
        return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([
            ColSpec("string", "mask"), ColSpec("long", "width"), ColSpec("long", "height"),
            ColSpec("double", "foreground_fraction"),
        ]),
        params=ParamSchema([ParamSpec("threshold", "double", DEFAULT_THRESHOLD)]),
    )


def input_example() -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: [encode_png(example_image())]})


def pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in RUNTIME_PACKAGES:
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def package_dir() -> str:
    """The tcnet package folder (shipped with the model as ``code_paths``)."""
    import tcnet

    return str(Path(tcnet.__file__).resolve().parent)


def _run_id(run: dict) -> str | None:
    """The tcnet run id (``<data>__<variant>__fold<k>``) of a checkpoint's ``run`` (a RunSpec as data)."""
    if run.get("run_id"):
        return str(run["run_id"])
    data = run.get("data")
    if isinstance(data, dict) and data.get("name") and run.get("variant") is not None and run.get("fold") is not None:
        return f"{data['name']}__{run['variant']}__fold{run['fold']}"
    return None


def log_pyfunc_model(
    checkpoint_path: str | os.PathLike,
    artifact_path: str = "model",
    registered_model_name: str | None = None,
    *,
    tags: dict[str, Any] | None = None,
    validate: bool = True,
):
    """Log a TCNet checkpoint as a :class:`TCNetSegmenter` pyfunc model into the active MLflow run
    (or as a run-less logged model when none is active); returns MLflow's ``ModelInfo``.

    ``artifact_path`` is the logged model's name (``runs:/<run_id>/<artifact_path>``). With
    ``registered_model_name`` a new version of that registered model is created
    (``model_info.registered_model_version``). ``validate`` runs the input example through the
    logged model once (MLflow's serving-input check), which proves it loads and predicts.
    """
    from tcnet.checkpoint import load_checkpoint

    checkpoint_path = Path(checkpoint_path)
    if not checkpoint_path.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint_path}: no such file")
    ckpt = load_checkpoint(checkpoint_path)
    run = ckpt.get("run") if isinstance(ckpt.get("run"), dict) else {}
    meta = {
        "model_name": ckpt.get("model_name"),
        "image_size": ckpt.get("image_size"),
        "num_classes": ckpt.get("num_classes"),
        "epoch": ckpt.get("epoch"),
        "config_hash": ckpt.get("config_hash"),
        "run_id": _run_id(run),
        "experiment": run.get("experiment"),
    }
    model_tags = {f"tcnet.{k}": str(v) for k, v in meta.items() if v is not None}
    model_tags.update({k: str(v) for k, v in (tags or {}).items()})
    with tempfile.TemporaryDirectory(prefix="tcnet-pyfunc-") as tmp:
        # "Models from code": the model is this two-line script plus the shipped tcnet package, so
        # loading it unpickles nothing (as checkpoints are read with weights_only=True).
        script = Path(tmp) / "tcnet_segmenter.py"
        script.write_text(MODEL_SCRIPT)
        return mlflow.pyfunc.log_model(
            name=artifact_path,
            python_model=str(script),
            artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_path)},
            code_paths=[package_dir()],
            signature=signature(),
            input_example=(input_example(), {"threshold": DEFAULT_THRESHOLD}) if validate else None,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
            metadata={"tcnet": {k: v for k, v in meta.items() if v is not None}},
            tags=model_tags,
            # the defaults a loader may override: mlflow.pyfunc.load_model(uri, model_config={...})
            model_config=dict(DEFAULT_MODEL_CONFIG),
        )


__all__ = [
    "TCNetSegmenter", "log_pyfunc_model", "signature", "input_example", "encode_png", "decode_png",
    "decode_image", "pip_requirements",
]

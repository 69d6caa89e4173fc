"""The TCNet pyfunc: logged to a local sqlite MLflow store, registered with the alias
``models:/tcnet@champion``, loaded in-process, used by ``tcnet predict``, and served by the REAL
``mlflow models serve`` (slow)."""

from __future__ import annotations

import base64
import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import tcnet
from tcnet.tools import serving

SIZE = 64
NAME, ALIAS = "tcnet", "champion"
URI = f"models:/{NAME}@{ALIAS}"


def b64_image(arr: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def rgb(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def check_mask(record: dict, width: int, height: int) -> np.ndarray:
    mask = serving.decode_png(record["mask"])
    assert record["width"] == width and record["height"] == height
    assert mask.shape == (height, width) and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 255}
    assert record["foreground_fraction"] == pytest.approx((mask == 255).mean())
    return mask


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store holding the registered pyfunc, ``models:/tcnet@champion``; yields the tracking URI."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    torch.manual_seed(2)
    ckpt = root / "best.pt"
    torch.save({"model": tcnet.create_model("tcnet_tiny").state_dict(), "model_name": "tcnet_tiny",
                "model_kwargs": {}, "num_classes": 1, "image_size": SIZE, "epoch": 3, "run": {}}, ckpt)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.chdir(root)  # nothing may land in the repository
        mlflow.set_tracking_uri(uri)
        client = mlflow.MlflowClient(uri)
        exp_id = client.create_experiment("tcnet/serving", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=exp_id):
            info = serving.log_pyfunc_model(ckpt, "model", registered_model_name=NAME)
        client.set_registered_model_alias(NAME, ALIAS, info.registered_model_version)
        yield uri
    mlflow.set_tracking_uri(previous)


def test_logged_model_has_signature_example_and_code(store):
    import mlflow

    info = mlflow.models.get_model_info(URI)
    assert [c.name for c in info.signature.inputs.inputs] == ["image"]
    assert [c.name for c in info.signature.outputs.inputs] == list(serving.OUTPUT_COLUMNS)
    assert info.signature.params.params[0].name == "threshold"
    assert info.metadata["tcnet"]["model_name"] == "tcnet_tiny"
    local = Path(mlflow.artifacts.download_artifacts(URI))
    assert (local / "code" / "tcnet" / "tools" / "serving.py").is_file()
    assert (local / "serving_input_example.json").is_file()


def test_pyfunc_predicts_masks_at_the_input_size(store):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    df = pd.DataFrame({"image": [b64_image(rgb(37, 53, 1)), b64_image(rgb(70, 45, 2), "JPEG")]})
    out = model.predict(df)
    assert list(out.columns) == list(serving.OUTPUT_COLUMNS) and len(out) == 2
    check_mask(out.iloc[0].to_dict(), 53, 37)
    check_mask(out.iloc[1].to_dict(), 45, 70)
    everything = model.predict(df, params={"threshold": 0.0}).iloc[0].to_dict()
    assert (check_mask(everything, 53, 37) == 255).all()


def test_a_dict_of_lists_is_one_image_per_element(store):
    import mlflow

    model = mlflow.pyfunc.load_model(URI)
    out = model.predict({"image": [b64_image(rgb(37, 53, 1)), b64_image(rgb(20, 30, 2))]})
    assert len(out) == 2
    check_mask(out.iloc[0].to_dict(), 53, 37)
    check_mask(out.iloc[1].to_dict(), 30, 20)


def test_the_model_config_sets_device_and_batch_and_a_missing_device_is_named(store, monkeypatch):
    import mlflow

    model = mlflow.pyfunc.load_model(URI, model_config={"device": "cpu", "batch_size": 1})
    inner = model.unwrap_python_model()
    assert inner.device.type == "cpu" and inner.batch_size == 1
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"the model config's device is 'cuda' but CUDA is not available"):
            mlflow.pyfunc.load_model(URI, model_config={"device": "cuda"})
        monkeypatch.setenv("TCNET_DEVICE", "cuda")
        with pytest.raises(ValueError, match=r"TCNET_DEVICE is 'cuda' but CUDA is not available"):
            mlflow.pyfunc.load_model(URI)


def test_bad_images_are_rejected_naming_the_row(store):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(URI)
    df = pd.DataFrame({"image": [b64_image(rgb(8, 8)), base64.b64encode(b"no image here").decode()]})
    with pytest.raises(MlflowException, match="row 1"):
        model.predict(df)


def test_predict_cli_takes_the_registry_alias(store, tmp_path):
    from tcnet.cli import main as cli

    Image.fromarray(rgb(31, 29)).save(tmp_path / "ISIC_0000042.png")
    assert cli(["predict", "--model", URI, "--input", str(tmp_path / "ISIC_0000042.png"), "--out", str(tmp_path / "o")]) == 0
    assert np.asarray(Image.open(tmp_path / "o" / "ISIC_0000042_segmentation.png")).shape == (31, 29)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_mlflow_models_serve_answers_invocations(store, tmp_path):
    import requests

    port = _free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    log = open(tmp_path / "server.log", "w")
    # The server execs `uvicorn` from PATH: the venv's bin must be on it (as in an activated venv).
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "TCNET_DEVICE": "cpu",
           "PATH": f"{mlflow_bin.parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    proc = subprocess.Popen(
        [str(mlflow_bin), "models", "serve", "-m", URI, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, f"server exited:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
            try:
                if requests.get(f"{base}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, f"no /ping:\n{(tmp_path / 'server.log').read_text()[-3000:]}"
            time.sleep(1)

        img = rgb(47, 61, 3)
        body = {"dataframe_split": {"columns": ["image"], "data": [[b64_image(img)], [b64_image(rgb(20, 33), "JPEG")]]},
                "params": {"threshold": 0.5}}
        r = requests.post(f"{base}/invocations", json=body, timeout=120)
        assert r.status_code == 200, r.text
        preds = r.json()["predictions"]
        assert len(preds) == 2
        check_mask(preds[0], 61, 47)
        check_mask(preds[1], 33, 20)

        r = requests.post(f"{base}/invocations", json={"inputs": {"image": [b64_image(img)]}, "params": {"threshold": 0.0}}, timeout=120)
        assert r.status_code == 200, r.text
        assert (check_mask(r.json()["predictions"][0], 61, 47) == 255).all()

        r = requests.post(f"{base}/invocations", json={"dataframe_records": [{"image": "bm90IGFuIGltYWdl"}]}, timeout=120)
        assert r.status_code == 400 and "row 0" in r.json()["message"]
    finally:
        with contextlib.suppress(ProcessLookupError):  # our own session: the server and its workers
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_decode_image_accepts_base64_data_urls_and_names_bad_rows():
    from tcnet.data.io import InvalidInputError

    img = rgb(5, 7)
    b64 = b64_image(img)
    np.testing.assert_array_equal(serving.decode_image(b64), img)
    np.testing.assert_array_equal(serving.decode_image(f"data:image/png;base64,{b64}"), img)
    for bad, why in [("%%%", "not valid base64"), ("", "empty"), (base64.b64encode(b"GIF89a junk").decode(), "row 3")]:
        with pytest.raises(InvalidInputError, match=why):
            serving.decode_image(bad, where="row 3")


def test_wrapped_and_url_safe_base64_are_accepted():
    from tcnet.tools.serving import decode_image

    from PIL.PngImagePlugin import PngInfo

    arr = rgb(37, 29, 3)
    for pad in ("", "x", "xx"):  # a text chunk sized so that the standard encoding has padding to drop
        info = PngInfo()
        info.add_text("c", pad)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="PNG", pnginfo=info)
        raw = buf.getvalue()
        if len(raw) % 3:
            break
    assert len(raw) % 3
    for text in (base64.encodebytes(raw).decode(), base64.urlsafe_b64encode(raw).decode().rstrip("="),
                 base64.b64encode(raw).decode().rstrip("=")):  # standard alphabet, padding dropped
        np.testing.assert_array_equal(decode_image(text, "row 0"), arr)

"""tcnet export: ONNX (onnxruntime, dynamic batch) and TorchScript match PyTorch to 1e-4."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch

import tcnet
from tcnet.cli import main as cli
from tcnet.tools import export as export_mod

SIZE = 64
ATOL = 1e-4


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tcnet_tiny checkpoint in the documented format."""
    torch.manual_seed(1)
    model = tcnet.create_model("tcnet_tiny", num_classes=1)
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    torch.save({"model": model.state_dict(), "model_name": "tcnet_tiny", "model_kwargs": {}, "num_classes": 1,
                "image_size": SIZE, "epoch": 1, "run": {}, "config_hash": "test"}, path)
    return path


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The PyTorch model as loaded (its own lk_impl) and an input batch of 2 it was not exported with."""
    from tcnet.checkpoint import load_model

    model, _ = load_model(checkpoint, torch.device("cpu"))
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        y = model.eval()(x).numpy()
    return x.numpy(), y


def test_onnx_runs_under_onnxruntime_and_matches(checkpoint, reference, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "tcnet.onnx"
    assert cli(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(out)]) == 0
    assert "verified" in capsys.readouterr().err
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable as any new file (mkstemp made 0600)
    proto = onnx.load(str(out))
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["tcnet.image_size"] == str(SIZE) and meta["tcnet.model_name"] == "tcnet_tiny"

    x, y = reference
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"image": x})[0]
    assert got.shape == y.shape == (2, 1, SIZE, SIZE)
    np.testing.assert_allclose(got, y, rtol=0, atol=ATOL)


def test_torchscript_loads_and_matches(checkpoint, reference, tmp_path):
    out = tmp_path / "tcnet.pt"
    result = export_mod.export(str(checkpoint), "torchscript", out)
    assert result.max_abs_diff <= ATOL and result.image_size == SIZE
    extra = {"tcnet.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["tcnet.json"])["tcnet.model_name"] == "tcnet_tiny"
    x, y = reference
    with torch.no_grad():
        got = loaded(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, y, rtol=0, atol=ATOL)


def test_exportable_copy_is_exact_and_leaves_the_model_alone(checkpoint):
    from tcnet.checkpoint import load_model
    from tcnet.models.lk_conv import LargeKernelDWConv

    model, _ = load_model(checkpoint, torch.device("cpu"))
    before = {n: m.lk_impl for n, m in model.named_modules() if isinstance(m, LargeKernelDWConv)}
    copy = export_mod.exportable_copy(model, SIZE)
    assert {m.lk_impl for m in copy.modules() if isinstance(m, LargeKernelDWConv)} == {"direct"}
    assert before == {n: m.lk_impl for n, m in model.named_modules() if isinstance(m, LargeKernelDWConv)}
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model.eval()(x), rtol=0, atol=1e-5)


def test_failed_verification_writes_nothing(checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "bad.onnx"
    real = export_mod._run_onnx
    monkeypatch.setattr(export_mod, "_run_onnx", lambda path, inputs: [r + 1.0 for r in real(path, inputs)])
    with pytest.raises(export_mod.ExportVerificationError, match="does not match PyTorch"):
        export_mod.export(str(checkpoint), "onnx", out)  # an exported model that computes something else
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_options_are_usage_errors_before_the_export(checkpoint, tmp_path, capsys):
    onnx = ["export", "--model", str(checkpoint), "--format", "onnx"]
    assert cli(onnx + ["--out", str(tmp_path / "m.onnx"), "--atol", "-1"]) == 2
    assert "--atol must be >= 0" in capsys.readouterr().err
    assert cli(onnx + ["--out", str(tmp_path / "m.onnx"), "--opset", "5"]) == 2
    err = capsys.readouterr().err
    assert "--opset 5: torch" in err and "graph" not in err.lower()  # no IR dump
    assert cli(onnx + ["--out", str(tmp_path / "m.onnx"), "--opset", "11"]) == 2  # in range, but no SDPA op
    assert "has attention (scaled_dot_product_attention), which ONNX exports from opset 14" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    assert cli(onnx + ["--out", str(tmp_path / "folder")]) == 2
    assert "is a folder; --out names the file to write" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_bad_size_is_a_usage_error(checkpoint, tmp_path, capsys, monkeypatch):
    for size in ("50", "0"):  # 0 is not "the checkpoint's size"
        assert cli(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                    "--size", size]) == 2
        assert f"--size must be a positive multiple of 32, got {size}" in capsys.readouterr().err
    # refused before the model is loaded (that takes seconds for a big checkpoint)
    import tcnet.tools.model_source as model_source

    monkeypatch.setattr(model_source, "load", lambda *a, **k: pytest.fail("the model was loaded"))
    assert cli(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                "--size", "100"]) == 2


def test_a_failing_onnx_export_is_one_line_not_an_ir_dump(checkpoint, tmp_path, capfd, monkeypatch):
    # torch's exporter prints its whole IR graph to fd 1 when an export fails; the CLI must not
    monkeypatch.setattr(export_mod, "uses_sdpa", lambda net: False)  # let torch itself meet the SDPA op
    out = tmp_path / "m.onnx"
    assert cli(["export", "--model", str(checkpoint), "--format", "onnx", "--out", str(out), "--opset", "11"]) == 2
    captured = capfd.readouterr()
    assert "ONNX export failed: Exporting the operator 'aten::scaled_dot_product_attention'" in captured.err
    assert "(at --opset 11; default 17)" in captured.err
    assert "graph" not in captured.out.lower() and len(captured.out) < 200, captured.out[:300]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["cenet", "unet"])
def test_baselines_export_at_the_demo_size(name, tmp_path, capsys):
    """CE-Net's pyramid pooling at 64² (bottleneck maps under its 6 px kernel) once made the ONNX
    exporter fail; every baseline exports and verifies at the size the demo trains at."""
    torch.manual_seed(2)
    model = tcnet.create_model(name, num_classes=1)
    ckpt = tmp_path / "best.pt"
    torch.save({"model": model.state_dict(), "model_name": name, "model_kwargs": {}, "num_classes": 1,
                "image_size": SIZE, "epoch": 1, "run": {}, "config_hash": "test"}, ckpt)
    assert cli(["export", "--model", str(ckpt), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    assert "verified" in capsys.readouterr().err

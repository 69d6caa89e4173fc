"""``tcnet models``: the table of registered models with params and GFLOPs."""

import json

from tcnet.cli import main
from tcnet.models import list_models


def test_models_table_at_64(tmp_path, capsys):
    out = tmp_path / "models.json"
    assert main(["models", "--size", "64", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for name in list_models():
        assert name in text
    data = json.loads(out.read_text())
    assert data["size"] == 64
    rows = {r["model"]: r for r in data["models"]}
    assert set(rows) == set(list_models())
    assert all(r["params"] > 0 and r["flops"] > 0 for r in rows.values())
    assert rows["tcnet_tiny"]["params"] < rows["tcnet_small"]["params"] < rows["tcnet_base"]["params"]
    # each printed figure is the exact count rounded once (UNet3+'s 26,965,249 prints 26.97, as published)
    line = next(x for x in text.splitlines() if x.startswith("unet3p "))
    assert line.split()[1:] == [f"{rows['unet3p']['params'] / 1e6:.2f}", f"{rows['unet3p']['flops'] / 1e9:.2f}"]
    assert line.split()[1] == "26.97"


def test_models_table_rejects_bad_size(capsys):
    assert main(["models", "--size", "50"]) == 2
    assert "multiple of 32" in capsys.readouterr().err


def test_json_alone_prints_json_and_a_bad_path_is_refused_before_the_counts(tmp_path, capsys, monkeypatch):
    """``--json`` alone prints JSON (as ``tcnet experiments --json``; it was "expected one
    argument"); a ``--json`` path that cannot be written is refused before any model is counted
    (the table used to print first, then the error)."""
    import tcnet.models.flops as flops

    assert main(["models", "--size", "32", "--models", "tcnet_tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["size"] == 32 and [r["model"] for r in data["models"]] == ["tcnet_tiny"]
    counted = []
    monkeypatch.setattr(flops, "model_complexity", lambda *a: counted.append(a))
    (tmp_path / "afile").write_text("x")
    for path, says in ((tmp_path, "is a folder; --json names the JSON file to write"),
                       (tmp_path / "afile" / "x.json", "is a file, not a folder")):
        assert main(["models", "--size", "32", "--json", str(path)]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and "GFLOPs" not in captured.out and not counted  # no table printed

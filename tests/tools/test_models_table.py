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


def test_models_table_rejects_bad_size(capsys):
    assert main(["models", "--size", "50"]) == 2
    assert "multiple of 32" in capsys.readouterr().err

"""The ``tcnet`` command's error contract: one line and status 2 for an error a user can act on,
the whole traceback with TCNET_TRACEBACK=1."""

import pytest

from tcnet.cli import main
from tcnet.config import ConfigError


@pytest.fixture
def bad_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: {epochs: 2, learning_rate: 0.1}\n")
    return path


def test_a_user_error_is_one_line_and_status_2(bad_params, capsys, monkeypatch):
    monkeypatch.delenv("TCNET_TRACEBACK", raising=False)
    assert main(["experiments", "--params", str(bad_params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tcnet experiments: error: ") and err.count("\n") == 1
    assert "learning_rate" in err and "Traceback" not in err


@pytest.mark.parametrize("value", ["1", "yes"])
def test_tcnet_traceback_raises_instead(bad_params, monkeypatch, value):
    monkeypatch.setenv("TCNET_TRACEBACK", value)
    with pytest.raises(ConfigError, match="learning_rate"):
        main(["experiments", "--params", str(bad_params)])


def test_help_says_how_to_get_the_traceback(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "TCNET_TRACEBACK=1" in capsys.readouterr().out

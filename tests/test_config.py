import pytest

from tcnet.config import ConfigError, Params, expand_runs, from_dict, load_params, n_folds


def test_params_yaml_loads_and_expands_every_experiment():
    p = load_params("params.yaml")
    assert set(p.experiments) == {"loss_sweep", "attention", "ph2_transfer", "isic2018_cv", "ablation"}
    runs = expand_runs(p, "isic2018_cv")
    assert len(runs) == 5 * n_folds("isic2018", p.split)
    assert len({r.run_id for r in runs}) == len(runs)
    sweep = expand_runs(p, "loss_sweep")
    assert [r.train.loss.ce_weight for r in sweep] == [0.1, 0.3, 0.5, 0.7, 0.9]


def test_unknown_key_is_rejected_with_suggestion():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epocs'.*did you mean 'epochs'"):
        from_dict(Params, {"train": {"epocs": 3}})


def test_bad_choice_lists_valid_options():
    with pytest.raises(ConfigError, match="valid: isic2017, isic2018, ph2, drive, chase_db1"):
        from_dict(Params, {"preprocess": {"datasets": ["isic2019"]}}).validate()


def test_type_errors_name_the_key():
    with pytest.raises(ConfigError, match="train.batch_size: expected an integer"):
        from_dict(Params, {"train": {"batch_size": "four"}})


def test_run_override_is_validated(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "experiments:\n  x:\n    title: t\n    reproduces: r\n    data: [{name: a, train: drive}]\n"
        "    runs: [{name: r1, train: {loss: {ce_wieght: 0.2}}}]\n"
    )
    p = load_params(f)
    with pytest.raises(ConfigError, match="ce_weight"):
        expand_runs(p, "x")


def test_missing_params_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_test_only_dataset_cannot_be_trained_on(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "experiments:\n  x:\n    title: t\n    reproduces: r\n    data: [{name: a, train: ph2}]\n"
        "    runs: [{name: r1}]\n"
    )
    with pytest.raises(ConfigError, match="ph2 is a test-only dataset"):
        expand_runs(load_params(f), "x")

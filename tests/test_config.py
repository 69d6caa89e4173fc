from pathlib import Path

import pytest

from tcnet.config import ConfigError, Params, expand_runs, from_dict, load_params, n_folds

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(ConfigError, match=r"p\.yaml: .*experiments\.x\.runs\.r1\.train\.loss\.ce_wieght.*ce_weight"):
        load_params(f)  # at load time, naming the file: not first when the run trains


def test_missing_params_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_test_only_dataset_cannot_be_trained_on(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text(
        "experiments:\n  x:\n    title: t\n    reproduces: r\n    data: [{name: a, train: ph2}]\n"
        "    runs: [{name: r1}]\n"
    )
    with pytest.raises(ConfigError, match=r"experiments\.x\.data\[0\]\.train: ph2 is a test-only dataset and cannot"):
        expand_runs(load_params(f), "x")
    # evaluated on PH2 with the default part (val): refused at load time, not after the training
    f.write_text(f.read_text().replace("train: ph2}", "train: isic2017, eval: ph2}"))
    with pytest.raises(ConfigError, match=r"experiments\.x\.data\[0\]\.part: ph2 is a test-only dataset, it has "
                                          r"no folds .*set part: test"):
        load_params(f)
    f.write_text(f.read_text().replace("train: isic2017, eval: ph2}", "train: isic2016}"))
    with pytest.raises(ConfigError, match=r"experiments\.x\.data\[0\]: unknown dataset 'isic2016' \(did you mean"):
        load_params(f)


def test_a_binary_or_folder_params_file_is_named(tmp_path):
    from tcnet.config import ConfigError, load_params

    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00binary\x80")
    with pytest.raises(ConfigError, match=r"bin\.yaml: not a text \(UTF-8\) file"):
        load_params(tmp_path / "bin.yaml")
    (tmp_path / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"dir\.yaml: is a folder, not a params file"):
        load_params(tmp_path / "dir.yaml")


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "lr", -1.0, "train.lr must be a finite number > 0, got -1.0"),
    ("train", "epochs", 0, "train.epochs must be >= 1, got 0"),
    ("train", "num_workers", -1, "train.num_workers must be a finite number >= 0, got -1"),
    ("evaluate", "threshold", 5, r"evaluate.threshold must be a probability in \[0, 1\], got 5"),
    ("evaluate", "batch_size", 0, "evaluate.batch_size must be >= 1, got 0"),
    ("compare", "confidence", 5, r"compare.confidence must be in \(0, 1\)"),
    ("compare", "bootstrap", -1, "compare.bootstrap must be >= 1"),
    ("preprocess", "workers", -2, "preprocess.workers must be >= 0"),
])
def test_out_of_range_values_are_refused_at_load_naming_file_and_key(tmp_path, section, key, value, message):
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    raw[section][key] = value
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=rf"p\.yaml: {message}"):
        load_params(f)


def test_a_run_override_out_of_range_names_the_run(tmp_path):
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    raw["experiments"]["loss_sweep"]["runs"][0]["train"] = {"epochs": -1}
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"p\.yaml: experiments\.loss_sweep\.runs\.lam0\.1: train\.epochs must be >= 1, got -1"):
        load_params(f)


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw["train"].update(min_lr=0.5), r"train.min_lr \(0.5\) must not exceed train.lr"),
    (lambda raw: raw["train"].update(lr=float("inf")), "train.lr must be a finite number > 0, got inf"),
    (lambda raw: raw["train"].update(device="cuda:x"), "train.device 'cuda:x': valid: auto, cpu, cuda, cuda:N"),
    (lambda raw: raw["train"].update(lr="1e-3"), r"expected a number, got '1e-3' \(YAML 1.1 reads 1e-3 as text: write 1.0e-3\)"),
    (lambda raw: raw["train"]["loss"].update(class_weights=[1.0]), "loss.class_weights must be null"),
    (lambda raw: raw["experiments"]["ablation"]["runs"][0].update(name="a/../../esc"),
     "run name 'a/../../esc' must be letters, digits"),
    (lambda raw: raw["experiments"]["ablation"]["train"].update(epohcs=3),  # named where it is, not as a run's
     r"unknown config key 'experiments.ablation.train.epohcs' \(did you mean 'epochs'"),
])
def test_settings_that_would_train_wrongly_or_write_elsewhere_are_refused(tmp_path, edit, message):
    import yaml

    raw = yaml.safe_load(open("params.yaml"))
    edit(raw)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message):
        load_params(tmp_path / "p.yaml")


def test_a_key_given_twice_or_an_empty_file_is_an_error(tmp_path):
    (tmp_path / "twice.yaml").write_text("train:\n  epochs: 2\n  epochs: 5\n")
    with pytest.raises(ConfigError, match=r"twice\.yaml: not valid YAML \(line 3, column 3\): key 'epochs' given twice"):
        load_params(tmp_path / "twice.yaml")
    (tmp_path / "open.yaml").write_text("train: [\n")  # PyYAML's own text spans four lines: one here
    with pytest.raises(ConfigError) as e:
        load_params(tmp_path / "open.yaml")
    assert "\n" not in str(e.value) and "open.yaml: not valid YAML (line 2, column 1): " in str(e.value)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match=r"empty\.yaml: the params file is empty"):
        load_params(tmp_path / "empty.yaml")
    (tmp_path / "noexp.yaml").write_text("train: {epochs: 2}\n")
    with pytest.raises(ConfigError, match="declares no experiments"):
        load_params(tmp_path / "noexp.yaml").experiment("e")


def test_num_workers_and_cuda_graph_do_not_change_a_runs_identity():
    from dataclasses import replace

    from tcnet.config import expand_runs

    params = load_params("params.yaml")
    spec = expand_runs(params, "ablation")[0]
    assert replace(spec, train=replace(spec.train, num_workers=4)).config_hash() == spec.config_hash()
    assert replace(spec, train=replace(spec.train, cuda_graph=not spec.train.cuda_graph)).config_hash() \
        == spec.config_hash()
    assert replace(spec, train=replace(spec.train, epochs=99)).config_hash() != spec.config_hash()


def test_batch_split_over_processes_names_the_runs_and_the_counts_that_fit(tmp_path):
    from tcnet.config import check_batch_split

    params = load_params(ROOT / "params.yaml")  # the demo: batch 4, the ablation's batch 2
    specs = [r for exp in params.experiments for r in expand_runs(params, exp)]
    check_batch_split(specs, 1)
    check_batch_split(specs, 2)
    with pytest.raises(ConfigError) as e:
        check_batch_split(specs, 4, "gpus")
    msg = str(e.value)
    assert msg.startswith("gpus 4 does not divide train.batch_size of 8 run(s) (ablation/drive__lkm__fold0 (2), ")
    assert "use gpus 1 or 2, or batch sizes that are multiples of 4" in msg


def test_aggregation_defaults_to_the_datasets_convention(tmp_path):
    """Retina sets are scored pooled over FOV pixels, skin sets per image: an experiment that does
    not say gets its datasets' convention, and one that mixes them must choose."""
    base = ("preprocess: {datasets: [isic2017, drive, chase_db1]}\nexperiments:\n  e:\n    title: t\n"
            "    reproduces: r\n    runs: [{name: a}]\n")
    cases = {"[{name: d, train: drive}, {name: c, train: chase_db1}]": "pooled",
             "[{name: i, train: isic2017}]": "mean"}
    for data, expected in cases.items():
        path = tmp_path / "p.yaml"
        path.write_text(base + f"    data: {data}\n")
        assert load_params(path).experiment("e").aggregation == expected
        path.write_text(base + f"    data: {data}\n    aggregation: mean\n")  # an explicit choice stands
        assert load_params(path).experiment("e").aggregation == "mean"
    path.write_text(base + "    data: [{name: d, train: drive}, {name: i, train: isic2017}]\n")
    with pytest.raises(ConfigError, match="experiments.e: evaluates retina datasets .* set aggregation"):
        load_params(path)
    path.write_text(base + "    data: [{name: d, train: drive}]\n    aggregation: poled\n")
    with pytest.raises(ConfigError, match="valid: mean, pooled$"):
        load_params(path)


@pytest.mark.parametrize("section, key, value, message", [
    ("train", "augment_shift", 0.5, r"train.augment_shift must be a fraction of the side in \[0, 0.5\)"),
    ("train", "augment_scale", [1.2, 0.9], r"train.augment_scale must be \[low, high\] with 0 < low <= high"),
    ("train", "augment_p", 1.5, r"train.augment_p must be a probability in \[0, 1\]"),
    ("preprocess", "class_weight_clip", [0, 50], r"preprocess.class_weight_clip must be \[low, high\] with 0 < low"),
])
def test_augmentation_and_class_weight_settings_are_checked(tmp_path, section, key, value, message):
    import yaml

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({section: {key: value}}))
    with pytest.raises(ConfigError, match=message):
        load_params(p)


def test_a_pair_setting_takes_exactly_two_values(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("train: {augment_scale: [0.9, 1.0, 1.1]}\n")
    with pytest.raises(ConfigError, match=r"train.augment_scale: expected a list of 2 values, got \[0.9, 1.0, 1.1\]"):
        load_params(p)

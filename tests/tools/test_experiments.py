"""`tcnet experiments` and the paper profile (profiles/paper.yaml)."""

import json
from pathlib import Path

from tcnet.cli import main as cli_main
from tcnet.config import expand_runs, load_params
from tcnet.tools.experiments import describe, render_text

ROOT = Path(__file__).resolve().parents[2]


def test_describe_lists_every_experiment_and_run():
    p = load_params(ROOT / "params.yaml")
    items = {i["id"]: i for i in describe(p, with_runs=True)}
    assert list(items)[:5] == ["loss_sweep", "attention", "ph2_transfer", "isic2018_cv", "ablation"]  # + a user's
    cv = items["isic2018_cv"]
    assert cv["n_runs"] == 5 * p.split.cv_folds and cv["reproduces"] == "Fig. 5"
    assert [r["run_id"] for r in cv["runs"]] == [r.run_id for r in expand_runs(p, "isic2018_cv")]
    assert items["ph2_transfer"]["datasets"] == ["isic2017->ph2:test"]
    assert items["ablation"]["datasets"] == ["drive:test", "chase_db1:test"]
    sweep = items["loss_sweep"]["runs"]
    assert [r["train_overrides"] for r in sweep] == [{"loss.ce_weight": x} for x in (0.1, 0.3, 0.5, 0.7, 0.9)]
    att = items["attention"]["runs"][1]
    assert att["model_kwargs"] == {"attention_placement": "none", "deep_supervision": True}
    text = render_text(list(items.values()))
    assert "isic2018__tcnet__fold2" in text and "train@<id>, evaluate@<id>" in text


def test_cli_text_and_json(capsys):
    assert cli_main(["experiments", "--params", str(ROOT / "params.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ablation" in out and "Table 3" in out and "isic2017__lam0.1__fold0" not in out
    assert cli_main(["experiments", "--params", str(ROOT / "params.yaml"), "--runs", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sum(i["n_runs"] for i in data) == sum(len(i["runs"]) for i in data)
    assert cli_main(["experiments", "--params", str(ROOT / "missing.yaml")]) == 2


SIZE_KNOBS = {"base_channels"}  # a baseline's width: the demo may shrink it (UNet3+), like its TCNet variant


def _runs_but_models(p, exp_id):
    return [
        (r.experiment, r.variant, r.label, r.data, r.fold,
         tuple(sorted((k, v) for k, v in r.model_kwargs.items() if k not in SIZE_KNOBS)),
         r.train.loss.ce_weight, r.model.startswith("tcnet"))
        for r in expand_runs(p, exp_id)
    ]


def test_paper_profile_loads_and_expands_the_same_runs():
    demo = load_params(ROOT / "params.yaml")
    paper = load_params(ROOT / "profiles" / "paper.yaml")
    assert paper.profile == "paper" and paper.compare.data_label == "real"
    assert (paper.preprocess.image_size, paper.train.epochs, paper.train.batch_size) == (448, 120, 15)
    assert (paper.train.lr, paper.train.min_lr, paper.split.cv_folds) == (1e-4, 1e-6, 5)
    assert (paper.train.num_workers, paper.train.device) == (8, "auto")
    assert list(paper.experiments) == list(demo.experiments)
    for exp_id in demo.experiments:
        runs = _runs_but_models(paper, exp_id)
        want = _runs_but_models(demo, exp_id)
        if exp_id == "isic2018_cv":  # 5 folds instead of the demo's 3: same variants on every fold
            assert {r[:4] + r[5:] for r in runs} == {r[:4] + r[5:] for r in want}
            assert {r[4] for r in runs} == set(range(5))
        else:
            assert runs == want
        tcnet_models = {r.model for r in expand_runs(paper, exp_id) if r.model.startswith("tcnet")}
        assert tcnet_models <= {"tcnet_base"}


def test_a_typo_in_a_model_or_its_options_is_named_before_any_training(tmp_path, capsys):
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["loss_sweep"]["model"] = "tcnet_tinny"
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["experiments", "--params", str(tmp_path / "p1.yaml")]) == 2
    assert "p1.yaml: experiments.loss_sweep.model: unknown model 'tcnet_tinny' (did you mean 'tcnet_tiny'?)" \
        in capsys.readouterr().err

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["isic2018_cv"]["runs"][-1]["model_overrides"] = {"base_chanels": 8}  # the last run
    (tmp_path / "p2.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["experiments", "--params", str(tmp_path / "p2.yaml")]) == 2
    err = capsys.readouterr().err
    assert ("p2.yaml: experiments.isic2018_cv.runs.tcnet.model_overrides: model 'tcnet_tiny' has no option(s) "
            "'base_chanels'") in err
    assert "did you mean 'base_channels'" in err
    # the train stage refuses it before its first run, not when the last one comes up
    assert cli_main(["train", "--params", str(tmp_path / "p2.yaml"), "--experiment", "isic2018_cv",
                     "--preprocessed", str(tmp_path / "none"), "--out", str(tmp_path / "models"), "--no-mlflow"]) == 2
    assert "runs.tcnet.model_overrides: model 'tcnet_tiny' has no option(s)" in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
    # an option the experiment gives every run: named there (it was named as 'experiments.attention')
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["attention"]["model_overrides"] = {"attn_heads": 2}
    (tmp_path / "p3.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["experiments", "--params", str(tmp_path / "p3.yaml")]) == 2
    err = capsys.readouterr().err
    assert "p3.yaml: experiments.attention.model_overrides: model 'tcnet_tiny' has no option(s) 'attn_heads'" in err, err
    # ...unless a run's own model rejects it: that run is named, and where the option came from
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["ph2_transfer"]["model_overrides"] = {"use_etm": False}
    (tmp_path / "p4.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["experiments", "--params", str(tmp_path / "p4.yaml")]) == 2
    err = capsys.readouterr().err
    assert "p4.yaml: experiments.ph2_transfer.runs." in err and "(given by experiments.ph2_transfer.model_overrides)" in err, err


def test_a_bad_value_of_a_model_option_is_named_before_any_training(tmp_path, capsys):
    """Option names were checked, values only when the run's model was built, after the runs before it
    had trained: now each (model, options) is built on the meta device first (no weights allocated)."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["experiments"]["attention"]["runs"][-1]["model_overrides"]["attention_placement"] = "all_convs"
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    run = raw["experiments"]["attention"]["runs"][-1]["name"]
    assert cli_main(["train", "--params", str(tmp_path / "p.yaml"), "--experiment", "attention",
                     "--preprocessed", str(tmp_path / "none"), "--out", str(tmp_path / "models"), "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert (f"error: experiments.attention.runs.{run}.model_overrides: model 'tcnet_tiny' cannot be built with "
            in err and "unknown attention_placement 'all_convs' (did you mean 'all_conv'?)" in err), err
    assert not (tmp_path / "models").exists()

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    unet = next(r for r in raw["experiments"]["isic2018_cv"]["runs"] if r.get("model") == "unetpp")
    unet["model_overrides"] = {"encoder_name": "resnet343"}
    (tmp_path / "q.yaml").write_text(yaml.safe_dump(raw))
    assert cli_main(["experiments", "--params", str(tmp_path / "q.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"runs.{unet['name']}.model_overrides: model 'unetpp' cannot be built with {{'encoder_name': 'resnet343'}}: " \
        "Wrong encoder name `resnet343`" in err and len(err) < 700, err

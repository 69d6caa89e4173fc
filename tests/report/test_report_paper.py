"""paper/reported.yaml -> the cells and stated differences of each experiment."""

import pytest

from tcnet.config import ExperimentConfig, from_dict
from tcnet.report.paper import match_variant, metric_of, paper_reference


def test_isic2018_cv_tcnet_cells_and_unetpp_delta(params, reported):
    ref = paper_reference(reported, "isic2018_cv", params.experiment("isic2018_cv"))
    assert ref.cells == {
        ("isic2018", "tcnet", "JA"): 90.334,
        ("isic2018", "tcnet", "AC"): 93.457,
        ("isic2018", "tcnet", "DI"): 91.773,
    }
    (d,) = ref.deltas
    # UNet++ is the run 'unetpp', never 'unet' (a loose match that dropped '+' would confuse them)
    assert (d.other_name, d.other_variant, d.metric, d.value) == ("UNet++", "unetpp", "JA", 7.64)


def test_ph2_has_only_differences_and_ssls_is_reported_elsewhere(params, reported):
    ref = paper_reference(reported, "ph2_transfer", params.experiment("ph2_transfer"))
    assert ref.cells == {}  # the paper gives no absolute PH2 value: none may appear
    got = {(d.other_name, d.metric): (d.other_variant, d.value) for d in ref.deltas}
    assert got == {
        ("UNet", "JA"): ("unet", 2.475),
        ("UNet", "DI"): ("unet", 3.96),
        ("SSLS", "AC"): ("", 11.153),
    }


def test_ablation_table3_every_cell_and_column_names(params, reported):
    ref = paper_reference(reported, "ablation", params.experiment("ablation"))
    assert len(ref.cells) == 4 * 2 * 4 and not ref.unmatched
    assert ref.cells[("drive", "lkm_etm_mfm", "AUC")] == 0.989
    assert ref.cells[("chase_db1", "lkm_etm", "AUC")] == 0.991
    assert ref.cells[("drive", "lkm", "AC")] == 0.925
    assert ref.cells[("chase_db1", "lkm_mfm", "SE")] == 0.873
    assert [ref.name(m) for m in ("AC", "SE", "SP", "AUC")] == ["Acc", "Sen", "Sp", "AUC"]


@pytest.mark.parametrize("exp_id", ["loss_sweep", "attention"])
def test_lost_figures_give_no_numbers(params, reported, exp_id):
    assert paper_reference(reported, exp_id, params.experiment(exp_id)).empty


def test_names_match_loosely_but_not_wrongly():
    exp = from_dict(ExperimentConfig, {
        "title": "t", "reproduces": "r", "data": [{"name": "ph2", "train": "isic2017"}],
        "runs": [{"name": "unet", "label": "UNet"}, {"name": "unetpp", "label": "UNet++"},
                 {"name": "u3", "label": "UNet3+"}],
    })
    assert match_variant("UNet++", exp.runs).name == "unetpp"
    assert match_variant("unet", exp.runs).name == "unet"
    assert match_variant("UNet 3+", exp.runs).name == "u3"
    assert match_variant("SSLS", exp.runs) is None
    assert [metric_of(c) for c in ("Acc", "Sen", "Sp", "AUC", "pixel-AC", "Dice", "x")] == [
        "AC", "SE", "SP", "AUC", "AC", "DI", None]

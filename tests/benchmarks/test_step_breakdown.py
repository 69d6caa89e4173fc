"""The step-breakdown benchmark's accounting: which modules it times and that its rows add up."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.step_breakdown import breakdown, kind_of, outermost, scaling_rows  # noqa: E402


def test_outermost_modules_of_each_kind():
    import tcnet
    from tcnet.models.attention import SpatialReductionAttention
    from tcnet.models.lk_conv import LargeKernelDWConv

    model = tcnet.create_model("tcnet_tiny")
    picked = outermost(model)
    names = [n for n, _, _ in picked]
    assert not any(a != b and b.startswith(a + ".") for a in names for b in names)  # none inside another
    sra = [n for n, m in model.named_modules() if isinstance(m, SpatialReductionAttention)]
    assert set(sra) <= set(names)
    assert not any(n.startswith(s + ".") for s in sra for n in names)  # SRA's own convs count as attention
    lk = [m for m in model.modules() if isinstance(m, LargeKernelDWConv)]
    assert sum(k == "large-kernel depthwise 31×31" for _, _, k in picked) == len(lk)
    assert kind_of(model.etm[0][0][0]) == "conv 4×4 stride 4" and kind_of(model.stem[0][1]) is None  # BatchNorm: in "rest"


def test_rows_add_up_to_the_step():
    r = breakdown("tcnet_tiny", 32, 2, channels_last=True, repeats=1, warmup=1)
    kinds, rest, step = r["rows"][:-2], r["rows"][-2], r["rows"][-1]
    assert rest["ms"] > 0  # the timed modules do not add up to more than the step: none counted twice
    assert all(x["ms"] > 0 and x["calls"] > 0 for x in kinds)
    assert abs(sum(x["gflop"] for x in kinds) + rest["gflop"] - step["gflop"]) < 1e-9
    assert rest["gflop"] == 0  # every FLOP the counter sees is inside a timed module
    assert sum(x["calls"] for x in kinds) == r["modules_timed"]  # each timed module ran once per step
    assert r["step_s_plain_median"] > 0 and step["gflop"] == r["model_gflop_step"]


def test_scaling_rows_speedup_and_what_a_kind_loses():
    one = [{"kind": "conv", "ms": 100.0}, {"kind": "gate", "ms": 10.0}, {"kind": "step", "ms": 110.0}]
    two = [{"kind": "conv", "ms": 52.0}, {"kind": "gate", "ms": 20.0}, {"kind": "extra", "ms": 1.0},
           {"kind": "step", "ms": 80.0}]
    rows = {r["kind"]: r for r in scaling_rows(one, two, threads=2)}
    assert set(rows) == {"conv", "gate", "step"}  # a kind missing on one side has no ratio
    assert rows["conv"]["speedup"] == 100 / 52 and rows["conv"]["lost_ms"] == 2.0
    assert rows["gate"]["speedup"] == 0.5 and rows["gate"]["lost_ms"] == 15.0  # slower on two threads
    assert rows["step"]["lost_pct"] == 100 * 25 / 80


def test_scaling_run_prints_both_thread_counts(tmp_path, capsys):
    import json

    from benchmarks.__main__ import main

    out = tmp_path / "sb.json"
    assert main(["step_breakdown", "--tiny", "--threads", "2", "--scaling", "--json", str(out)]) == 0
    assert "thread scaling by kind of module, 1 → 2 threads" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    rows = payload["tables"]["tcnet_tiny channels_last scaling"]
    assert rows[-1]["kind"].startswith("step") and all(r["ms_1"] > 0 and r["ms_n"] > 0 for r in rows)
    assert payload["summary"]["models"]["tcnet_tiny"]["step_s_plain_median_1_thread"] > 0

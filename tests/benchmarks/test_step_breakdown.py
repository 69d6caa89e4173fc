"""The step-breakdown benchmark's accounting: which modules it times and that its rows add up."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.step_breakdown import breakdown, kind_of, outermost  # noqa: E402


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

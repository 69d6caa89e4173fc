"""The gemm benchmark: it finds every attention call of a step, with the shapes the model gives it."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gemm import _attention, attention_calls  # noqa: E402


def test_attention_calls_cover_every_module_with_its_map():
    import torch

    import tcnet

    model = tcnet.create_model("tcnet_small")  # ETM [1,1,2,1]: stage 3 has two blocks
    calls = attention_calls(model, 64, 2)
    cfg = model.config
    etm_parts = 2 * sum(cfg.etm_depths)
    assert sum(c["calls"] for c in calls.values()) == etm_parts + 2  # + MFM at the two coarsest scales
    by_width = {c["shape"][1]: c for c in calls.values()}
    assert sorted(by_width) == list(cfg.dims)
    for i, dim in enumerate(cfg.dims):
        c = by_width[dim]
        assert c["shape"] == (2, dim, 64 // 4 // 2**i, 64 // 4 // 2**i)
        assert (c["module"].num_heads, c["module"].sr_ratio) == (cfg.num_heads[i], cfg.sr_ratios[i])
    assert by_width[cfg.dims[2]]["calls"] == 2 * cfg.etm_depths[2] + 1
    # the forced route is undone afterwards
    m = by_width[cfg.dims[0]]["module"]
    _attention(m, torch.randn(1, cfg.dims[0], 16, 16), True)
    assert m.onednn is None

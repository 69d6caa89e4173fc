"""The ceiling benchmark's switches: what a variant takes out, that everything else still trains, and its table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import ceiling as cl  # noqa: E402


def _model():
    import tcnet

    torch.manual_seed(0)
    return tcnet.create_model("tcnet_tiny").train()


def test_bypasses_wrap_each_kind_and_change_nothing_until_switched_off():
    from tcnet.models.layers import ChannelAttention, LayerNorm2d

    model = _model()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model.eval()(x)
    counts = cl.add_bypasses(model)
    assert set(counts) == set(cl.REMOVABLE) and all(n > 0 for n in counts.values())
    bypasses = [m for m in model.modules() if isinstance(m, cl.Bypass)]
    assert sum(isinstance(m.inner, LayerNorm2d) for m in bypasses) == counts["LayerNorm2d"]
    assert not any(isinstance(m, cl.Bypass) for b in bypasses for m in b.inner.modules())  # outermost only
    assert all(isinstance(b.inner, cl._classes(b.kind)) for b in bypasses)
    assert any(isinstance(b.inner, ChannelAttention) for b in bypasses)
    with torch.no_grad():
        assert torch.equal(model(x), ref)  # wrapped, switched on: the same numbers
        with cl.with_removed(model, ("GELU",)):
            assert all(b.off == (b.kind == "GELU") for b in bypasses)
            assert not torch.equal(model(x), ref)
    assert not any(b.off for b in bypasses)  # switched back


def test_switches_are_restored_when_the_step_fails():
    import torch.nn.functional as F

    model = _model()
    cl.add_bypasses(model)
    sdpa = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError):
        with cl.with_removed(model, cl.REMOVABLE):
            assert F.scaled_dot_product_attention is cl.sdpa_stand_in
            raise RuntimeError("step failed")
    assert F.scaled_dot_product_attention is sdpa
    assert not any(m.off for m in model.modules() if isinstance(m, cl.Bypass))


def test_without_sdpa_the_attention_still_trains_its_projections():
    from tcnet.models.attention import SpatialReductionAttention

    attn = SpatialReductionAttention(32, num_heads=2, sr_ratio=2)
    with cl.with_removed(attn, (cl.SDPA,)):
        attn(torch.randn(2, 32, 8, 8)).sum().backward()
    for name, p in attn.named_parameters():  # q, kv (keys and values), sr conv, its norm, proj
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    kv = attn.kv.weight.grad
    assert kv[:32].abs().sum() > 0 and kv[32:].abs().sum() > 0  # the keys' half too


def test_a_removed_kind_gets_no_gradient_and_the_rest_does():
    model = _model()
    cl.add_bypasses(model)
    with cl.with_removed(model, ("CBAM gates",)):
        out = model(torch.randn(2, 3, 64, 64))
        (out[0] if isinstance(out, (tuple, list)) else out).sum().backward()
    gates = {id(p) for b in model.modules() if isinstance(b, cl.Bypass) and b.kind == "CBAM gates"
             for p in b.parameters()}
    assert gates
    for p in model.parameters():
        assert (p.grad is None) == (id(p) in gates)


def test_ceiling_run_prints_every_variant(tmp_path, capsys):
    from benchmarks.__main__ import main

    out = tmp_path / "sb.json"
    assert main(["step_breakdown", "--tiny", "--ceiling", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "the ratio if a kind of work were free" in text
    rows = json.loads(out.read_text())["tables"]["tcnet_tiny channels_last ceiling"]
    assert [r["config"] for r in rows] == ["unet channels_last"] + [f"tcnet_tiny {v}" for v in cl.variants()]
    assert rows[1]["vs_as_is"] == 1.0 and rows[0]["paired"] == 1.0
    assert all(r["step_s"] > 0 and r["removed"] > 0 for r in rows[2:])
    assert rows[-1]["removed"] == sum(r["removed"] for r in rows[2:-1])  # "all of these" is each kind at once
    summary = json.loads(out.read_text())["summary"]["models"]["tcnet_tiny"]
    assert summary["ceiling_all_removed_vs_as_is"] == rows[-1]["vs_as_is"]

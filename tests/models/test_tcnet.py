"""TCNet: placements, deep supervision, ablations, errors, determinism, memory format, export."""

import warnings

import pytest
import torch

from tcnet.models import ATTENTION_PLACEMENTS, TCNet, TCNetConfig, create_model, set_lk_impl
from tcnet.models.etm import ETMBlock
from tcnet.models.layers import HAM
from tcnet.models.mfm import MFM


def _n_params(m):
    return sum(p.numel() for p in m.parameters())


def _count(m, cls):
    return sum(isinstance(x, cls) for x in m.modules())


@pytest.mark.parametrize("placement", ATTENTION_PLACEMENTS)
def test_placements_with_deep_supervision(placement):
    # Train mode: [main, aux x3], all at full size; eval mode: the main logits only.
    torch.manual_seed(0)
    model = create_model("tcnet_tiny", attention_placement=placement, deep_supervision=True)
    x = torch.randn(2, 3, 64, 64)
    out = model.train()(x)
    assert isinstance(out, list) and len(out) == 4
    assert all(o.shape == (2, 1, 64, 64) and torch.isfinite(o).all() for o in out)
    sum(o.mean() for o in out).backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        ev = model.eval()(x)
    assert isinstance(ev, torch.Tensor) and ev.shape == (2, 1, 64, 64)


def test_deep_supervision_off_returns_tensor():
    model = create_model("tcnet_tiny", attention_placement="input_four_output", deep_supervision=False).train()
    assert model.decoder.aux_heads is None
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)


def test_ham_counts_per_placement():
    counts = {p: _count(create_model("tcnet_tiny", attention_placement=p), HAM) for p in ATTENTION_PLACEMENTS}
    # tcnet_tiny: 4 LKM blocks, 3 decoder stages.
    assert counts == {
        "none": 0,
        "all_conv": 4 + 3,
        "skip": 3,
        "upsample": 3,
        "input_single_output": 2,
        "input_four_output": 1 + 4,
    }


def test_bad_placement_lists_choices():
    with pytest.raises(ValueError, match=r"'skp' \(did you mean 'skip'\?\); valid: none, all_conv, skip, upsample, "
                                         r"input_single_output, input_four_output"):
        create_model("tcnet_tiny", attention_placement="skp")


def test_ablation_switches_change_the_architecture():
    full = create_model("tcnet_tiny")
    no_etm = create_model("tcnet_tiny", use_etm=False)
    no_mfm = create_model("tcnet_tiny", use_mfm=False)
    lkm_only = create_model("tcnet_tiny", use_etm=False, use_mfm=False)
    assert _count(full, ETMBlock) == 4 and _count(full, MFM) == 4
    assert no_etm.etm is None and _count(no_etm, ETMBlock) == 0 and _count(no_etm, MFM) == 4
    assert no_mfm.mfm is None and _count(no_mfm, MFM) == 0 and _count(no_mfm, ETMBlock) == 4
    assert lkm_only.etm is None and lkm_only.mfm is None
    sizes = [_n_params(m) for m in (full, no_etm, no_mfm, lkm_only)]
    assert len(set(sizes)) == 4 and min(sizes) == sizes[-1] and max(sizes) == sizes[0]
    x = torch.randn(1, 3, 64, 64)
    for m in (no_etm, no_mfm, lkm_only):
        with torch.no_grad():
            assert m.eval()(x).shape == (1, 1, 64, 64)


def test_variants_grow():
    sizes = [_n_params(create_model(n)) for n in ("tcnet_tiny", "tcnet_small")]
    assert sizes[0] < sizes[1]
    cfg = create_model("tcnet_base").config
    assert cfg.base_channels == 64 and cfg.lkm_depths == (2, 2, 4, 2) and cfg.etm_depths == (1, 1, 2, 1)


def test_lk_impl_and_lk_size_propagate():
    from tcnet.models.lk_conv import LargeKernelDWConv

    model = create_model("tcnet_tiny", lk_impl="fft", lk_size=13)
    convs = [m for m in model.modules() if isinstance(m, LargeKernelDWConv)]
    assert len(convs) == 4 + 2 * 4  # one per LKM block, one per ETM part
    assert {(m.lk_impl, m.kernel_size) for m in convs} == {("fft", 13)}
    set_lk_impl(model, "direct")
    assert {m.lk_impl for m in convs} == {"direct"} and model.config.lk_impl == "direct"


def test_same_seed_same_output_and_impls_agree():
    x = torch.randn(2, 3, 64, 64)
    outs = []
    for impl in ("fft", "fft", "direct"):
        torch.manual_seed(123)
        model = create_model("tcnet_tiny", lk_impl=impl).eval()
        with torch.no_grad():
            outs.append(model(x))
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-4, atol=1e-4)


def test_channels_last_input():
    torch.manual_seed(0)
    model = create_model("tcnet_tiny").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        got = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        got2 = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got2, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True], ids=["NCHW", "channels_last"])
def test_trains_under_cpu_bf16_autocast(channels_last):
    """train.cpu_bf16: a train step under CPU autocast (gates, large kernels, attention) gives finite
    float32 gradients for every parameter."""
    torch.manual_seed(0)
    model = create_model("tcnet_tiny").train()
    x = torch.randn(2, 3, 64, 64)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_non_square_and_multiclass():
    model = TCNet(TCNetConfig(num_classes=4)).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 4, 64, 96)


def test_size_not_multiple_of_32_is_rejected():
    with pytest.raises(ValueError, match="multiples of 32"):
        create_model("tcnet_tiny").eval()(torch.randn(1, 3, 48, 64))


def test_bad_config_values():
    with pytest.raises(ValueError, match="lkm_depths must be 4"):
        create_model("tcnet_tiny", lkm_depths=(1, 1))
    with pytest.raises(ValueError, match="valid: auto, direct, fft, mixed"):
        create_model("tcnet_tiny", lk_impl="winograd")


def test_torch_export_with_direct():
    torch.manual_seed(0)
    model = set_lk_impl(create_model("tcnet_tiny").eval(), "direct")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ep = torch.export.export(model, (x,))
        torch.testing.assert_close(ep.module()(x), model(x))


def test_direct_trace_is_valid_at_other_sizes():
    # No shape-dependent Python on the direct path: a graph traced at one size holds at any size.
    from tcnet.models.lkm import LKMBlock

    torch.manual_seed(0)
    block = LKMBlock(8, 31, lk_impl="direct").eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(block, torch.randn(1, 8, 2, 2), check_trace=False)
        with torch.jit.optimized_execution(False):
            x = torch.randn(2, 8, 20, 24)
            torch.testing.assert_close(traced(x), block(x))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")])])
def test_every_lk_impl_computes_the_same_model(device):
    """The whole network, not one convolution: direct, fft, mixed and auto give the same logits
    (float32; cuDNN's TF32 off, else the direct reference is the inexact one)."""
    torch.manual_seed(0)
    model = create_model("tcnet_tiny", lk_impl="direct").to(device).eval()
    x = torch.randn(2, 3, 64, 64, device=device)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False), torch.no_grad():
        ref = model(x)
        for impl in ("fft", "mixed", "auto"):
            set_lk_impl(model, impl)
            y = model(x)
            assert float((y - ref).abs().max() / ref.abs().max()) < 1e-4, impl

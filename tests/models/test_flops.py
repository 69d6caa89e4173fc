"""FLOP and parameter counting."""

from torch import nn

from tcnet.models import LargeKernelDWConv, create_model
from tcnet.models.flops import count_flops, count_params, flops_by_kind, flops_by_module, model_complexity


def test_count_flops_of_a_conv_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 2 FLOPs per multiply-add: 2 * (8*32*32 outputs) * (3*3*3 taps)
    assert count_flops(conv, 32) == 2 * 8 * 32 * 32 * 27
    assert count_params(conv) == 8 * 27


def test_large_kernel_counted_as_direct_and_impl_restored():
    conv = nn.Sequential(LargeKernelDWConv(4, 31, lk_impl="fft"))
    conv.train()
    flops = count_flops(conv, 16, in_channels=4)
    assert flops == 2 * 4 * 16 * 16 * 31 * 31  # the whole kernel, as F.conv2d computes it
    assert conv[0].lk_impl == "fft" and conv.training


def test_model_complexity_on_meta_matches_real_model():
    info = model_complexity("tcnet_tiny", 64)
    model = create_model("tcnet_tiny")
    assert info["params"] == count_params(model)
    assert info["flops"] == count_flops(model, 64)  # incl. attention: SDPA's CPU kernel is counted too
    assert info["gflops"] > 0 and info["size"] == 64
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_flops_scale_with_area():
    small, big = (model_complexity("unet", s)["flops"] for s in (64, 128))
    assert 3.9 < big / small < 4.1


def test_flops_by_kind_splits_the_total():
    model = create_model("tcnet_tiny")
    lk = [m for m in model.modules() if isinstance(m, LargeKernelDWConv)]
    outs = []
    hooks = [m.register_forward_hook(lambda mod, args, out: outs.append(out.numel())) for m in lk]
    kinds = flops_by_kind(model, 64)
    for h in hooks:
        h.remove()
    # every 31×31 layer counted as the direct convolution: 2 FLOPs × 961 taps per output element
    assert kinds["large_kernel"] == sum(2 * n * 31 * 31 for n in outs) and len(outs) == len(lk) > 0
    assert kinds["total"] == count_flops(model, 64)
    assert kinds["large_kernel"] + kinds["convolution"] + kinds["attention_matmul"] == kinds["total"]
    assert kinds["convolution"] > 0 and kinds["attention_matmul"] > 0  # TCNet has both
    plain = flops_by_kind(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False)), 32)
    assert plain == {"total": 2 * 8 * 32 * 32 * 27, "large_kernel": 0, "convolution": 2 * 8 * 32 * 32 * 27,
                     "attention_matmul": 0}


def test_flops_by_module_nests_and_sums():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False),
                          nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), LargeKernelDWConv(4, 31, lk_impl="fft")))
    per = flops_by_module(model, 16, batch=2)
    conv0, conv1, lk = 2 * 2 * 8 * 16 * 16 * 27, 2 * 2 * 4 * 16 * 16 * 8, 2 * 2 * 4 * 16 * 16 * 31 * 31
    assert (per["0"], per["1.0"], per["1.1"]) == (conv0, conv1, lk)  # the 31×31 layer counted direct
    assert per["1"] == conv1 + lk  # a module's count includes its children's
    assert per[""] == conv0 + conv1 + lk == count_flops(model, 16, batch=2)

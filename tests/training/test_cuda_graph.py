"""train.cuda_graph: the whole train step captured in a CUDA graph (tcnet/training/cuda_graph.py).

On CPU: when it applies and what it refuses. On CUDA (marker ``cuda``): the graphed steps train as
the eager loop does (same losses and weights, the learning rate followed, short batches eager),
and a non-finite loss leaves the weights as they were.
"""

from __future__ import annotations

import functools
import types
from pathlib import Path

import pytest
import torch

from tcnet.training import loop
from tcnet.training.cuda_graph import GraphedTrainStep, cuda_graph_off_reason

CUDA = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_it_applies_on_one_cuda_process_with_an_eager_model_only():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert cuda_graph_off_reason(True, cuda, 1, compiled=False) is None
    assert "off" in cuda_graph_off_reason(False, cuda, 1, compiled=False)
    assert "not CUDA" in cuda_graph_off_reason(True, cpu, 1, compiled=False)
    assert "DDP" in cuda_graph_off_reason(True, cuda, 2, compiled=False)
    assert "compile" in cuda_graph_off_reason(True, cuda, 1, compiled=True)


def test_it_refuses_a_cpu_model_and_an_optimiser_that_cannot_be_captured():
    model = torch.nn.Conv2d(3, 1, 3)
    opt = torch.optim.Adam(model.parameters())
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedTrainStep(model, opt, lambda *a, **k: None, batch_size=2)
    # an optimiser not built capturable, its parameters on a GPU (a stand-in: the check reads the device)
    opt.param_groups[0]["params"] = [types.SimpleNamespace(device=torch.device("cuda", 0))]
    with pytest.raises(ValueError, match="capturable=True"):
        GraphedTrainStep(model, opt, lambda *a, **k: None, batch_size=2)


def test_it_is_opt_in_until_the_stage_path_has_run_on_a_gpu():
    from tcnet.config import TrainConfig, load_params

    assert TrainConfig().cuda_graph is False
    root = Path(__file__).resolve().parents[2]
    assert load_params(root / "params.yaml").train.cuda_graph is False
    assert load_params(root / "profiles" / "paper.yaml").train.cuda_graph is False


def _toy(device, n=10, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.interpolate(torch.randn(n, 3, 4, 4, generator=g), size=size, mode="bilinear")
    masks = (images[:, :1] > 0).float()
    fov = torch.ones(n, 1, size, size)
    return [t.to(device) for t in (images, masks, fov)]


def _model_and_opt(device, lr=1e-2, deep_supervision=False):
    import tcnet

    torch.manual_seed(0)
    model = tcnet.create_model("tcnet_tiny", lk_impl="fft", deep_supervision=deep_supervision)
    model = model.to(device).to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=True)
    return model, opt


@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_graphed_steps_train_as_the_eager_loop_does(device, deep_supervision):
    """float32, TF32 off: eager steps and graphed steps (with a learning-rate change, which captures
    again, and a short batch, which runs eagerly between replays) give the same losses and weights;
    the train stage's loss (class weights on the device, the FOV), with and without deep supervision."""
    from tcnet.losses import build_loss
    from tcnet.config import LossConfig

    dev = torch.device(device)
    images, masks, fov = _toy(dev)
    batches = [(0, 4), (4, 8), (0, 4), (4, 8), (8, 10), (0, 4), (4, 8), (0, 4)]  # (8, 10): a short batch
    lrs = {5: 3e-3}  # before the sixth step: the scheduler's change, once an epoch
    loss_fn = build_loss(LossConfig(ce_weight=0.5), [0.7, 1.8], 1, deep_supervision).to(dev)
    results = {}
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False, benchmark=False):
        torch.backends.cuda.matmul.allow_tf32 = False
        for mode in ("eager", "graph"):
            model, opt = _model_and_opt(dev, deep_supervision=deep_supervision)
            fl = functools.partial(loop.forward_loss, model, loss_fn, device=dev, bf16=False)
            graphed = GraphedTrainStep(model, opt, fl, batch_size=4, warmup=1) if mode == "graph" else None
            losses = []
            for i, (a, b) in enumerate(batches):
                for g in opt.param_groups:
                    g["lr"] = lrs.get(i, g["lr"])
                x = images[a:b].contiguous(memory_format=torch.channels_last)
                if graphed is None:
                    opt.zero_grad(set_to_none=True)
                    loss = fl(x, masks[a:b], fov[a:b])
                    loss.backward()
                    opt.step()
                else:
                    loss = graphed(x, masks[a:b], fov[a:b])
                losses.append(float(loss.detach()))
            results[mode] = (losses, [p.detach().clone() for p in model.parameters()], graphed)
    eager_losses, eager_w, _ = results["eager"]
    graph_losses, graph_w, graphed = results["graph"]
    assert graphed.summary() == {"captures": 2, "replays": 6, "eager_steps": 2}  # 1 warm-up + the short batch
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    assert eager_losses[-1] < eager_losses[0]
    for we, wg in zip(eager_w, graph_w):
        assert float((we - wg).abs().max()) <= 1e-4 * max(1.0, float(we.abs().max()))


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=CUDA)])
def test_a_non_finite_loss_in_a_replay_leaves_the_weights_and_the_loop_blames_the_data(device):
    from tcnet.losses.combined import CombinedLoss

    dev = torch.device(device)
    images, masks, fov = _toy(dev, n=8)
    model, opt = _model_and_opt(dev)
    loss_fn = CombinedLoss(ce_weight=0.5, class_weights=[0.7, 1.8]).to(dev)
    graphed = GraphedTrainStep(model, opt, functools.partial(loop.forward_loss, model, loss_fn, device=dev),
                               batch_size=4, warmup=1)
    x = images[:4].contiguous(memory_format=torch.channels_last)
    graphed(x, masks[:4], fov[:4])  # warm-up (eager)
    graphed(x, masks[:4], fov[:4])  # capture + replay
    before = [p.detach().clone() for p in model.parameters()]
    steps = [int(s["step"]) for s in opt.state.values()]
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    assert not torch.isfinite(graphed(bad, masks[:4], fov[:4]))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the update was skipped
    assert [int(s["step"]) for s in opt.state.values()] == steps  # and Adam's step count with it
    assert torch.isfinite(graphed(x, masks[:4], fov[:4]))  # the next batch trains
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the loop raises, naming the data (the weights are finite: not the previous step's fault)
    data = [{"image": images[i].cpu(), "mask": masks[i].cpu(), "fov": fov[i].cpu(), "id": f"img{i}"} for i in range(4)]
    data[0]["image"] = data[0]["image"].clone()
    data[0]["image"][0, 0, 0] = float("nan")
    batches = torch.utils.data.DataLoader(data, batch_size=4)
    with pytest.raises(loop.NonFiniteLossError, match=r"batch ids: img0, img1, img2, img3\); lower train.lr, check"):
        loop.train_one_epoch(model, batches, loss_fn, opt, dev, epoch=1, run_id="r", channels_last=True,
                             progress=False, graphed=graphed)


def test_an_eager_step_hands_back_a_loss_that_holds_no_autograd_graph():
    """A caller keeps the last loss until the next step returns (the loop's variable). Were it the
    autograd graph's root, the parameters' AccumulateGrad nodes of that eager step would live into
    the next capture and make it invalid (an H200: "operation would make the legacy stream depend
    on a capturing blocking stream"). The eager path itself runs on the CPU."""
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    step = GraphedTrainStep.__new__(GraphedTrainStep)  # past the CUDA check: only the eager path runs
    step.model, step.optimizer, step.params, step.eager_steps, step._grads = model, opt, list(model.parameters()), 0, []
    step.forward_loss = lambda image, mask, fov, graph_safe: ((model(image) - mask) ** 2 * fov).mean()
    before = model.weight.detach().clone()
    x, m, f = torch.randn(2, 3, 8, 8), torch.ones(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    loss = step._eager((x, m, f))
    assert loss.grad_fn is None and not loss.requires_grad
    assert step.eager_steps == 1 and not torch.equal(before, model.weight)  # it did train
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    trained = model.weight.detach().clone()
    assert not torch.isfinite(step._eager((bad, m, f)))
    assert torch.equal(trained, model.weight)  # no update from a non-finite loss

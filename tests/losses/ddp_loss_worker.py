"""Run under ``torch.distributed.run --nproc_per_node N`` by test_losses_ddp.py: one step of a small
model under DDP, each process with its 1/N of a batch, the loss built with ``sum_across``; rank 0
also computes the one-process references and saves everything to ``argv[1]``."""

import sys

import torch
import torch.distributed as dist
from torch import nn

from tcnet.config import LossConfig
from tcnet.losses import build_loss
from tcnet.training.runtime import init_distributed

B, H = 8, 12


def case(num_classes: int):
    g = torch.Generator().manual_seed(7)
    image = torch.randn(B, 3, H, H, generator=g)
    if num_classes == 1:
        mask = (torch.rand(B, H, H, generator=g) < torch.linspace(0.05, 0.6, B)[:, None, None]).float()
    else:
        mask = torch.randint(0, num_classes, (B, H, H), generator=g)
    # a field of view that differs per image: the processes' shares count different numbers of pixels
    fov = (torch.rand(B, H, H, generator=g) < torch.linspace(0.3, 1.0, B)[:, None, None]).float()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))
    weights = [1.0, 3.0] if num_classes == 1 else [1.0, 2.0, 4.0]
    return model, image, mask, fov, weights


def step(model, loss_fn, image, mask, fov):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(image), mask, fov)
    loss.backward()
    return float(loss), [p.grad.detach().clone() for p in model.parameters()]


def main(out: str) -> None:
    d = init_distributed("cpu")
    results = {}
    for num_classes in (1, 3):
        model, image, mask, fov, weights = case(num_classes)
        cfg = LossConfig(ce_weight=0.4)
        share = slice(d.rank * B // d.world_size, (d.rank + 1) * B // d.world_size)
        ddp = nn.parallel.DistributedDataParallel(model)
        loss, grads = step(ddp, build_loss(cfg, weights, num_classes, sum_across=d.sum_across()),
                           image[share], mask[share], fov[share])
        naive, naive_grads = step(ddp, build_loss(cfg, weights, num_classes), image[share], mask[share], fov[share])
        naive = torch.tensor([naive], dtype=torch.float64)
        dist.all_reduce(naive)  # the mean of the processes' own losses, what DDP alone would report
        if d.rank == 0:
            plain = build_loss(cfg, weights, num_classes)
            ref, ref_grads = step(model, plain, image, mask, fov)
            results[num_classes] = {"loss": loss, "grads": grads, "ref": ref, "ref_grads": ref_grads,
                                    "naive": float(naive) / d.world_size, "naive_grads": naive_grads}
    if d.rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])

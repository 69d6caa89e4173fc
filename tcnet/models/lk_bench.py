"""Time the large-kernel depthwise convolution: ``direct`` vs ``fft``, forward and forward+backward.

    python -m tcnet.models.lk_bench                      # the default shapes (TCNet's at 448² and 64²)
    python -m tcnet.models.lk_bench --shape 2 64 112 112 --k 31 --repeat 5
    python -m tcnet.models.lk_bench --model tcnet_tiny --size 448 --batch 2 --impls auto direct
                                                         # a whole training step (Adam, BCE) per lk_impl

Prints a table (best of ``--repeat`` runs, in milliseconds: on a shared machine the minimum is the
number least disturbed by other work) and the fft speed-up; the numbers in ``docs/model.md`` come
from this command.
"""

from __future__ import annotations

import argparse
import time

import torch

from tcnet.models.lk_conv import choose_impl, dwconv_direct, dwconv_fft

DEFAULT_SHAPES = [(2, 64, 112, 112, 31), (2, 128, 56, 56, 31), (2, 256, 28, 28, 31), (2, 512, 14, 14, 31),
                  (2, 16, 16, 16, 31), (2, 64, 56, 56, 7), (2, 64, 56, 56, 13)]


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times) * 1000


def bench(B: int, C: int, H: int, W: int, k: int, repeat: int = 3, device: str = "cpu") -> dict:
    x = torch.randn(B, C, H, W, device=device, requires_grad=True)
    w = torch.randn(C, 1, k, k, device=device, requires_grad=True)
    b = torch.randn(C, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    row = {"shape": f"{B}x{C}x{H}x{W}", "k": k}
    for name, f in (("direct", dwconv_direct), ("fft", dwconv_fft)):
        def fwd():
            with torch.no_grad():
                f(x, w, b)
            sync()

        def fwd_bwd():
            f(x, w, b).sum().backward()
            sync()

        row[f"{name}_fwd_ms"] = _time(fwd, repeat)
        row[f"{name}_fwdbwd_ms"] = _time(fwd_bwd, repeat)
    row["speedup_fwdbwd"] = row["direct_fwdbwd_ms"] / row["fft_fwdbwd_ms"]
    row["auto_train"] = choose_impl(torch.device(device), C, H, W, k, True)
    return row


def bench_step(name: str, size: int, batch: int, impls: list[str], repeat: int = 3) -> list[dict]:
    """Best-of-``repeat`` seconds of one training step (forward, BCE, backward, Adam) and of one
    eval forward of the registered model ``name``, per ``lk_impl``."""
    import torch.nn.functional as F

    from tcnet.models.lk_conv import set_lk_impl
    from tcnet.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x = torch.randn(batch, 3, size, size)
    target = torch.rand(batch, 1, size, size).round()

    def step():
        loss = F.binary_cross_entropy_with_logits(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model(x)

    rows = []
    for impl in impls:
        set_lk_impl(model, impl)
        model.train()
        train_s = _time(step, repeat) / 1000
        model.eval()
        eval_s = _time(infer, repeat) / 1000
        rows.append({"model": name, "size": size, "batch": batch, "lk_impl": impl, "train_step_s": train_s,
                     "eval_forward_s": eval_s})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs=4, type=int, metavar=("B", "C", "H", "W"))
    p.add_argument("--k", type=int, default=31)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", help="time a training step of this registered model instead")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--impls", nargs="+", default=["auto", "direct"])
    a = p.parse_args(argv)
    if a.model:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {a.repeat}")
        for r in bench_step(a.model, a.size, a.batch, a.impls, a.repeat):
            print(f"{r['model']} {r['size']}² batch {r['batch']} lk_impl={r['lk_impl']:<6}: "
                  f"train step {r['train_step_s']:.2f} s, eval forward {r['eval_forward_s']:.2f} s")
        return 0
    shapes = [(*a.shape, a.k)] if a.shape else DEFAULT_SHAPES
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {a.device}")
    print(f"{'shape':<16}{'k':>4}{'direct fwd':>12}{'fft fwd':>10}{'direct f+b':>12}{'fft f+b':>10}{'speedup':>9}  auto(train)")
    for s in shapes:
        r = bench(*s, repeat=a.repeat, device=a.device)
        print(f"{r['shape']:<16}{r['k']:>4}{r['direct_fwd_ms']:>12.1f}{r['fft_fwd_ms']:>10.1f}"
              f"{r['direct_fwdbwd_ms']:>12.1f}{r['fft_fwdbwd_ms']:>10.1f}{r['speedup_fwdbwd']:>8.1f}x  {r['auto_train']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

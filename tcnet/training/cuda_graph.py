"""A whole train step -- forward, loss, backward, Adam -- captured in one CUDA graph and replayed.

Why: on an H200, tcnet_base's paper-profile step (448², batch 15, bf16, channels_last) launches
~4,900 kernels, most of them small (elementwise glue, LayerNorm, reductions, the FFTs' pieces); the
GPU was busy 58.5 ms of an eager step's 140, waiting on the CPU's launches for the rest. Replaying
the captured step took 59.9 ms (`python -m benchmarks gpu_step --cuda-graph`, docs/performance.md §7).

How (PyTorch's "whole-network capture"):

- the first ``warmup`` full-size batches train eagerly on a side stream: lazy initialisation (Adam's
  state, cuBLAS and cuFFT plans, ``lk_impl=auto``'s measurements) happens outside the graph;
- then one step is captured with the gradients unset, so that the captured backward writes them
  (it does not accumulate) and every replay is one whole step; inputs are copied into the graph's
  static tensors before each replay and the loss is read from its static output;
- the learning rate is a number baked into the captured optimizer step: when the scheduler changes
  it (once an epoch), the step is captured again (a fraction of a second);
- a batch of another size (an epoch's short last batch) trains eagerly, as without the graph; a
  full-size batch of another shape, dtype or layout is captured again;
- a non-finite loss skips the captured update (Adam's ``found_inf``, the protocol ``GradScaler``
  uses): the eager loop raises before its update, and the weights stay as they were here too.

Only on CUDA, in one process (DDP's bucketing needs more care), for a model not compiled.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
from torch import nn

WARMUP_STEPS = 3  # eager full-size steps before the first capture (PyTorch's docs use 3 or more)


def cuda_graph_off_reason(enabled: bool, device: torch.device, world_size: int, compiled: bool) -> Optional[str]:
    """Why ``train.cuda_graph`` does not apply to this run, or ``None`` when it does."""
    if not enabled:
        return "train.cuda_graph is off"
    if device.type != "cuda":
        return f"device {device} is not CUDA"
    if world_size > 1:
        return f"{world_size} processes (DDP): captured steps are single-process here"
    if compiled:
        return "train.compile is on (torch.compile's own CUDA graphs: mode='reduce-overhead')"
    return None


def _lrs(optimizer) -> tuple[float, ...]:
    return tuple(float(g["lr"]) for g in optimizer.param_groups)


class GraphedTrainStep:
    """``step(image, mask, fov) -> loss`` (a 0-d tensor): one optimiser step, replayed from a CUDA
    graph for batches of ``batch_size`` once warm, eagerly otherwise.

    ``forward_loss(image, mask, fov, graph_safe) -> loss`` computes the loss (autocast inside; with
    ``graph_safe`` autocast's weight-cast cache off, as a capture needs). The optimizer must be
    ``capturable`` (and is best ``fused``).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 forward_loss: Callable[..., torch.Tensor], batch_size: int, warmup: int = WARMUP_STEPS):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if not params or params[0].device.type != "cuda":
            raise ValueError("GraphedTrainStep needs a model and optimiser on a CUDA device")
        if not all(g.get("capturable", False) for g in optimizer.param_groups):
            raise ValueError("GraphedTrainStep needs an optimiser built with capturable=True")
        self.model, self.optimizer, self.forward_loss = model, optimizer, forward_loss
        self.batch_size, self.warmup = int(batch_size), int(warmup)
        self.device = params[0].device
        self.params = params
        self.warm = 0  # full-size eager steps so far
        self.captures = 0  # how many times the step was captured (the first, then once per new lr)
        self.replays = 0
        self.eager_steps = 0
        self._graph: Optional[torch.cuda.CUDAGraph] = None
        self._lrs: tuple[float, ...] = ()
        self._static: tuple[torch.Tensor, ...] = ()
        self._shapes: tuple = ()
        self._loss: Optional[torch.Tensor] = None
        self._grads: list[Optional[torch.Tensor]] = []
        self._found_inf: Optional[torch.Tensor] = None

    @staticmethod
    def _signature(tensors) -> tuple:
        return tuple((tuple(t.shape), t.dtype, t.stride()) for t in tensors)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, fov: torch.Tensor) -> torch.Tensor:
        inputs = (image, mask, fov)
        if image.shape[0] != self.batch_size:
            return self._eager(inputs)
        if self.warm < self.warmup:
            self.warm += 1
            return self._eager(inputs, side_stream=True)
        if self._graph is None or self._lrs != _lrs(self.optimizer) or self._shapes != self._signature(inputs):
            self._capture(inputs)
        for static, new in zip(self._static, inputs):
            static.copy_(new, non_blocking=True)
        self._graph.replay()
        self.replays += 1
        return self._loss

    def _eager(self, inputs, side_stream: bool = False) -> torch.Tensor:
        """One step without the graph; the captured gradients' tensors are put back after it."""
        self.eager_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        stream = torch.cuda.Stream(self.device) if side_stream else None
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            loss = self.forward_loss(*inputs, graph_safe=False)
            if torch.isfinite(loss.detach()):  # as the eager loop: no update from a non-finite loss
                loss.backward()
                self.optimizer.step()
        if stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._grads:  # the graph writes and reads these: keep .grad pointing at them
            for p, g in zip(self.params, self._grads):
                p.grad = g
        # Detached: a caller holding this loss (a loop's variable, until the next step's result
        # replaces it) would keep this step's autograd graph, and with it the parameters'
        # AccumulateGrad nodes made on the warm-up stream, alive into the capture, whose backward
        # would then reach back to that stream: an invalid capture (seen on an H200).
        return loss.detach()

    def _capture(self, inputs) -> None:
        # The old graph's memory goes back first (the graph, then every tensor of its private pool),
        # once no replay of it can still be running.
        torch.cuda.synchronize(self.device)
        self._graph, self._loss, self._grads, self._static, self._found_inf = None, None, [], (), None
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates (writes) the gradients
        self._static = tuple(t.detach().clone() for t in inputs)
        # kept with the graph: its kernels write this memory on every replay
        self._found_inf = found_inf = torch.zeros((), device=self.device, dtype=torch.float32)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.found_inf = found_inf  # read by fused Adam's step inside the capture only
        try:
            # thread_local: the DataLoader's pin-memory thread allocates pinned memory while this
            # thread captures (each epoch's first batch: a new learning rate), which the default
            # "global" mode would count as an error of the capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                loss = self.forward_loss(*self._static, graph_safe=True)
                loss.backward()
                found_inf.copy_((~torch.isfinite(loss.detach())).float())
                self.optimizer.step()
        finally:
            del self.optimizer.found_inf
        self._graph, self._loss = graph, loss.detach()
        self._lrs, self._shapes = _lrs(self.optimizer), self._signature(inputs)
        self._grads = [p.grad for p in self.params]
        self.captures += 1

    def summary(self) -> dict:
        return {"captures": self.captures, "replays": self.replays, "eager_steps": self.eager_steps}


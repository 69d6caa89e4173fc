"""Pipeline stage ``train``: every run of an experiment, resumable, tracked in MLflow.

    tcnet train --params params.yaml --experiment ID [--run RUN_ID ...] [--preprocessed outputs/preprocessed]
                [--splits outputs/splits] [--out outputs/models] [--checkpoint-dir DIR] [--nproc N] [--no-mlflow]

One run (:func:`train_run`) writes ``<out>/<experiment>/<run_id>/``: ``best.pt`` (best validation
DI), ``last.pt`` (every epoch; without the optimizer state once the run is finished),
``history.csv``, ``run.json``. Re-running after a crash or ``kill -9`` resumes from ``last.pt``
when it was written by the same configuration, training code and training inputs (config, code and
inputs hashes: :mod:`tcnet.fingerprint`); a finished run is skipped on the same terms, and trained
afresh when any of the three changed. Protocol, resume and determinism: docs/training.md.

With ``--checkpoint-dir DIR`` a run trains (and resumes) in ``DIR/<experiment>/<run_id>/`` and its
files are copied to ``<out>/<experiment>/<run_id>/`` when it is finished: for an output folder that
does not outlive the process, such as a Kubeflow task's output artifact, with ``DIR`` on a volume that
a retried task finds again (docs/deploy.md).
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from tcnet.config import (ConfigError, MlflowConfig, Params, RunSpec, check_batch_split, expand_runs, load_params,
                          params_hash, to_dict)
from tcnet.training.loop import NonFiniteLossError
from tcnet.utils.atomic import atomic_dir, atomic_write, check_replaceable

OUTPUT_FILES = ("best.pt", "last.pt", "history.csv", "run.json")
# A new best epoch is written to best.pt at once when the file is this old (seconds); sooner, only
# when a worse epoch follows or the run ends (_train). Long epochs keep best.pt fresh, as always;
# short ones (the demo's ~1 s) stop rewriting it every epoch.
BEST_PT_MAX_AGE_S = 300.0


def _say(msg: str) -> None:
    print(f"tcnet train: {msg}", file=sys.stderr, flush=True)


_SAID: set[str] = set()


def _say_once(msg: str) -> None:
    """``_say`` a message the first time only: the same for every run of a call (the loader cap)."""
    if msg not in _SAID:
        _SAID.add(msg)
        _say(msg)


def _fmt(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, data: dict) -> None:
    with atomic_write(path) as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def _class_weights(preprocessed_dir: Path, dataset: str, train_ids: Sequence[str]) -> Optional[list[float]]:
    """The weighted cross-entropy's class weights from this run's own training images: their FOV
    pixel counts at the stored size (``manifest.csv``'s ``fov_pixels`` / ``fg_pixels``), clipped as
    preprocess clipped its dataset-level ones (``stats.json``'s ``class_weight_clip``). Never from
    the images the run validates on or is scored on (a cross-validation fold's held-out part, a
    retina hold-out, a user split's test images). None when ``stats.json`` has no entry."""
    from tcnet.data.dataset import read_manifest
    from tcnet.losses.class_weights import class_weights_from_counts

    entry = (_read_json(preprocessed_dir / "stats.json") or {}).get(dataset)
    if not entry:
        return None
    manifest = read_manifest(preprocessed_dir)
    rows = manifest[(manifest["dataset"] == dataset) & manifest["id"].isin(set(train_ids))]
    fg = int(rows["fg_pixels"].sum())
    return class_weights_from_counts([int(rows["fov_pixels"].sum()) - fg, fg], tuple(entry["class_weight_clip"]))


# What a run's files must have been written with to be resumed or kept: run.json / checkpoint key -> what it is.
IDENTITY = {"config_hash": "another configuration", "code_hash": "other training code",
            "inputs_hash": "other training inputs"}


def _identity(spec: RunSpec, preprocessed_dir: Path, splits_dir: Path) -> dict[str, str]:
    """The config, code and inputs hashes of ``spec`` (see :data:`IDENTITY`, :mod:`tcnet.fingerprint`)."""
    from tcnet.fingerprint import code_hash, inputs_hash

    return {"config_hash": spec.config_hash(), "code_hash": code_hash(),
            "inputs_hash": inputs_hash(preprocessed_dir, splits_dir, spec.data.train)}


def _identity_change(have: dict, want: dict[str, str]) -> Optional[str]:
    """Why files recorded with ``have`` do not belong to ``want`` (None when they do)."""
    for key, what in IDENTITY.items():
        if have.get(key) != want[key]:
            return f"{what} ({key.replace('_', ' ')} {have.get(key) or 'not recorded'}, now {want[key]})"
    return None


def _resume_state(run_dir: Path, spec: RunSpec, identity: dict[str, str], verbose: bool = True) -> Optional[dict]:
    """``last.pt`` when it can be resumed (readable, same config, code and inputs hashes); else None, saying why."""
    from tcnet.checkpoint import CheckpointError, load_checkpoint

    last = run_dir / "last.pt"
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)
    except CheckpointError as e:
        if verbose:
            _say(f"{spec.run_id}: {e}; starting fresh")
        return None
    change = _identity_change(ckpt, identity)
    if change:
        if verbose:
            _say(f"{spec.run_id}: {last} was written with {change}{_settings_changed(ckpt.get('run'), spec)}; "
                 "starting fresh")
        return None
    return ckpt


def _load_as_process_0_did(last: Path, epoch: int, dist) -> dict:
    """``last.pt`` in a process other than 0, which resumes after ``epoch``: the same file, or an error
    (every process must fail rather than train from another state than process 0)."""
    from tcnet.checkpoint import CheckpointError, load_checkpoint

    where = f"process {dist.rank} of {dist.world_size}"
    try:
        ckpt = load_checkpoint(last)
    except CheckpointError as e:
        raise RuntimeError(f"{where}: {e}; process 0 resumes after epoch {epoch} from it. Every process must "
                           f"read the same run folder, {last.parent} (with several machines: on a shared file "
                           "system)") from e
    if int(ckpt["epoch"]) != epoch:
        raise RuntimeError(f"{where}: {last} holds epoch {ckpt['epoch']}, process 0 resumes after epoch {epoch}: "
                           "every process must read the same run folder (with several machines: --out on a "
                           "shared file system)")
    return ckpt


def _settings_changed(recorded, spec: RunSpec) -> str:
    """``"; changed: train.epochs 8 -> 20, ..."`` between a checkpoint's recorded RunSpec and ``spec``."""
    from tcnet.config import setting_differences

    if not isinstance(recorded, dict):
        return ""
    diffs = setting_differences(recorded, {**to_dict(spec), "run_id": spec.run_id})
    if not diffs:
        return ""
    shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, a, b in diffs[:4])
    return f"; changed: {shown}{' ...' if len(diffs) > 4 else ''}"


def _loaders(spec: RunSpec, preprocessed_dir: Path, splits_dir: Path, dist, sync_bn: bool = False):
    from torch.utils.data import DataLoader, DistributedSampler

    from tcnet.data.dataset import SegmentationDataset, ids_for, load_split
    from tcnet.training.runtime import loader_workers, per_process_batch
    from tcnet.utils.cpus import available_cpus

    cfg = spec.train
    split = load_split(splits_dir, spec.data.train)
    train_ids = ids_for(split, "train", spec.fold)
    if cfg.max_train_images is not None:
        train_ids = train_ids[: cfg.max_train_images]
    val_ids = ids_for(split, "val", spec.fold)
    if not train_ids:
        raise ValueError(f"run {spec.run_id}: fold {spec.fold} of {splits_dir}/{spec.data.train}.json has no training ids")
    train_ds = SegmentationDataset(preprocessed_dir, spec.data.train, train_ids, augment=cfg.augment, seed=cfg.seed,
                                   augment_options={"shift": cfg.augment_shift, "scale": cfg.augment_scale,
                                                    "p": cfg.augment_p})
    val_ds = SegmentationDataset(preprocessed_dir, spec.data.train, val_ids, augment=False, seed=cfg.seed)
    # Data order depends on (seed, epoch) only: DistributedSampler permutes with seed + epoch (also
    # with one process), and the dataset augments item i of epoch e with a seed of (seed, e, i).
    sampler = DistributedSampler(train_ds, num_replicas=dist.world_size, rank=dist.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=False)
    per_rank = len(sampler)
    # train.batch_size is the batch of one optimiser step: each process takes its share of it.
    batch = per_process_batch(cfg.batch_size, dist.world_size)
    # A last batch of one image breaks BatchNorm at the 1x1 coarsest scale: drop it (only then). Under
    # DDP on CUDA BatchNorm is synchronised (``sync_bn``), so the step's whole last batch counts: one
    # image of the epoch's own (n % batch_size == 1, as in one process; each process's share of that
    # step is then its one image or a padding repeat, dropped with it).
    if sync_bn:
        drop_last = len(train_ds) > cfg.batch_size and len(train_ds) % cfg.batch_size == 1
    else:
        drop_last = per_rank > batch and per_rank % batch == 1
    cpus = available_cpus()  # a pod's CPU request (TCNET_CPUS), not its node's cores
    n_workers = loader_workers(cfg.num_workers, dist.world_size, cpus)
    if n_workers < cfg.num_workers and dist.is_main:
        _say_once(f"train.num_workers {cfg.num_workers} -> {n_workers} DataLoader workers per process: {cpus} CPU(s) "
                  f"here for {dist.world_size} process(es), each keeping one for itself; all {cfg.num_workers} need "
                  f"{(cfg.num_workers + 1) * dist.world_size} CPUs (TCNET_CPUS, else the affinity mask or cgroup "
                  "quota; on Kubeflow --train-cpu)")
    workers = dict(num_workers=n_workers, persistent_workers=n_workers > 0,
                   pin_memory=torch.cuda.is_available())
    generator = torch.Generator()
    train_loader = DataLoader(train_ds, batch_size=batch, sampler=sampler, drop_last=drop_last,
                              generator=generator, **workers)
    val_loader = None
    if len(val_ds) and dist.is_main:
        val_loader = DataLoader(val_ds, batch_size=cfg.batch_size, shuffle=False,
                                generator=torch.Generator().manual_seed(cfg.seed), **workers)
    return train_ds, sampler, train_loader, generator, val_loader


def _model_and_optim(spec: RunSpec, device: torch.device, capturable: bool = False):
    """Model, Adam and the cosine schedule; ``capturable``: Adam's step may be captured in a CUDA
    graph (train.cuda_graph)."""
    import tcnet

    cfg = spec.train
    model = tcnet.create_model(spec.model, **spec.model_kwargs).to(device)
    if device.type == "cuda" and cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # fused: one kernel over every parameter instead of ~10 ops per tensor (tcnet_base has 509):
    # the optimizer step 6-9x faster on CPU (`python -m benchmarks cpu_settings`); same update rule.
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                 fused=device.type in ("cpu", "cuda"), capturable=capturable)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.min_lr)
    return model, optimizer, scheduler


def _checkpoint(spec: RunSpec, identity: dict[str, str], model, image_size: int, epoch: int, history: list,
                best: dict, optimizer=None, scheduler=None, with_state: bool = True, snapshot: bool = False) -> dict:
    """The checkpoint dict; ``snapshot``: the weights copied, to outlive further training (on CPU
    ``.cpu()`` hands back the parameters themselves)."""
    from tcnet.checkpoint import rng_state

    return {
        "model": {k: v.detach().to("cpu", copy=snapshot) for k, v in model.state_dict().items()},
        "model_name": spec.model,
        "model_kwargs": dict(spec.model_kwargs),
        "num_classes": int(spec.model_kwargs.get("num_classes", 1)),
        "image_size": int(image_size),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict() if with_state else {},
        "scheduler": scheduler.state_dict() if with_state else {},
        "rng": rng_state() if with_state else {},
        "history": [dict(r) for r in history],
        "run": {**to_dict(spec), "run_id": spec.run_id},
        **identity,
        "best_epoch": int(best["epoch"]),
        "best_score": float(best["score"]),
    }


def _run_tags(spec: RunSpec, provenance: dict, profile: str, params_digest: str) -> dict:
    return {
        **provenance,
        "tcnet.experiment": spec.experiment,
        "tcnet.run_id": spec.run_id,
        "tcnet.variant": spec.variant,
        "tcnet.label": spec.label,
        "tcnet.model": spec.model,
        "tcnet.fold": str(spec.fold),
        "tcnet.data": spec.data.name,
        "tcnet.train_dataset": spec.data.train,
        "tcnet.eval_dataset": spec.data.eval_dataset,
        "tcnet.config_hash": spec.config_hash(),
        "tcnet.params_hash": params_digest,
        "tcnet.seed": str(spec.train.seed),
        "tcnet.profile": profile,
    }


def train_run(spec: RunSpec, preprocessed_dir, splits_dir, run_dir, mlflow_cfg: Optional[MlflowConfig] = None,
              tracking_ctx=None, *, profile: str = "", params_digest: str = "", progress: bool = True,
              publish_to=None) -> dict:
    """Train one run into ``run_dir`` (resuming from ``last.pt`` when possible); returns ``run.json``.

    ``publish_to``: where the finished run's files go (:func:`publish`) when ``run_dir`` is a
    checkpoint folder (``--checkpoint-dir``); the MLflow tag ``tcnet.checkpoint`` names that copy.

    ``tracking_ctx``: a :class:`tcnet.tracking.ExperimentTracker` (the experiment's parent run,
    opened once by :func:`run` before the runs start), or None for no MLflow logging.
    Under torchrun (``WORLD_SIZE`` > 1) every process calls this; rank 0 alone writes files and logs.
    Global torch settings changed for the run (deterministic algorithms, cuDNN flags) are restored.
    """
    from tcnet.training.runtime import determinism, flush_denormal, init_distributed, resolve_device

    dist = init_distributed(spec.train.device)
    device = resolve_device(spec.train.device, dist.local_rank)
    if device.type == "cpu":
        from tcnet.utils.heap import retain_freed_memory

        # Each step frees its activations in the backward and glibc handed them back to the kernel
        # (or unmapped the blocks above 32 MiB), so every forward faulted them in again (tcnet_base
        # at 448², batch 2: 56-124 k page faults and 4-9 % of the step; `python -m benchmarks
        # cpu_settings --only heap [--batch 4]`). Process-wide, for life.
        retain_freed_memory(trim_threshold=None)
    run_dir = Path(run_dir)
    with determinism(spec.train.deterministic, device), flush_denormal(device):
        info = _train(spec, Path(preprocessed_dir), Path(splits_dir), run_dir, mlflow_cfg or MlflowConfig(),
                      tracking_ctx, dist, device, profile, params_digest, progress)
    if publish_to and dist.is_main and info.get("complete"):
        publish(run_dir, Path(publish_to))
        _say(f"{spec.run_id}: copied {run_dir} to {publish_to}")
        if tracking_ctx is not None and info.get("mlflow_run_id"):  # _finish's tag named run_dir, or was skipped
            from tcnet.tracking import retry

            retry(tracking_ctx.client.set_tag, info["mlflow_run_id"], "tcnet.checkpoint",
                  str((Path(publish_to) / "best.pt").resolve()))
    return info


def _train(spec: RunSpec, preprocessed_dir: Path, splits_dir: Path, run_dir: Path, mlflow_cfg: MlflowConfig,
           tracking_ctx, dist, device: torch.device, profile: str, params_digest: str, progress: bool) -> dict:
    from tcnet.checkpoint import save_checkpoint, set_rng_state
    from tcnet.losses import build_loss
    from tcnet.tracking import NullRunLogger
    from tcnet.training.cuda_graph import GraphedTrainStep, cuda_graph_off_reason
    from tcnet.training.loop import cpu_has_native_bf16, forward_loss, history_rows_csv, train_one_epoch, validate
    from tcnet.provenance import collect
    from tcnet.training.runtime import epoch_seed, seed_everything

    cfg = spec.train
    if device.type == "cuda" and cfg.bf16 and dist.is_main and not torch.cuda.is_bf16_supported(including_emulation=False):
        _say(f"{spec.run_id}: train.bf16 is on but {torch.cuda.get_device_name(device)} has no native bfloat16 "
             "(compute capability < 8.0): it is emulated, slower than float32; set train.bf16: false")
    if device.type == "cpu" and cfg.cpu_bf16 and dist.is_main and not cpu_has_native_bf16():
        _say(f"{spec.run_id}: train.cpu_bf16 is on but this CPU has no native bfloat16 (AVX512-BF16 or AMX): "
             "oneDNN emulates it, which is slower than float32; set train.cpu_bf16: false for speed")
    identity = _identity(spec, preprocessed_dir, splits_dir)
    config_hash = identity["config_hash"]
    # Process 0 alone reads the run's files and decides (skip, resume after epoch k, start fresh), and
    # tells the others: processes deciding each for itself could disagree (a file one of them cannot
    # read, a run folder not shared between machines) and then wait on each other for ever.
    ckpt, info, decision = None, {}, {"skip": False, "epoch": None}
    if dist.is_main:
        ckpt = _resume_state(run_dir, spec, identity)
        info = _read_json(run_dir / "run.json") or {}
        if _identity_change(info, identity):  # _resume_state said why
            info = {}
        if ckpt is not None and int(ckpt["epoch"]) >= cfg.epochs and info.get("complete"):
            _say(f"{spec.run_id}: already trained ({cfg.epochs} epochs, best val DI {_fmt(info.get('best_val_DI'))}); skipping")
            decision["skip"] = True
        # A last.pt without optimizer state is written only after the final epoch: its training is over,
        # and what is left is _finish (a crash came between them). Before its final epoch it cannot be resumed.
        elif ckpt is not None and not ckpt.get("optimizer") and int(ckpt["epoch"]) < cfg.epochs:
            _say(f"{spec.run_id}: {run_dir / 'last.pt'} holds no optimizer state to resume from; starting fresh")
            ckpt = None
        if ckpt is None:
            for name in OUTPUT_FILES:  # leftovers of another configuration or of a run killed in epoch 1
                (run_dir / name).unlink(missing_ok=True)
        decision["epoch"] = None if ckpt is None else int(ckpt["epoch"])
    if dist.is_main and ckpt is not None and info.get("world_size") not in (None, dist.world_size):
        _say(f"{spec.run_id}: resuming with {dist.world_size} process(es); the epochs so far trained with "
             f"{info['world_size']}. The step's batch is the same, but BatchNorm statistics on CPU (per process) and "
             "an epoch's padding (where the count does not divide the images) follow the new count, so the run "
             f"will not match one trained throughout with either (docs/training.md)")
    decision = dist.broadcast(decision)
    if decision["skip"]:
        return {**(info if dist.is_main else (_read_json(run_dir / "run.json") or {})), "skipped": True}
    if not dist.is_main and decision["epoch"] is not None:
        ckpt = _load_as_process_0_did(run_dir / "last.pt", decision["epoch"], dist)
    stateless = ckpt is not None and not ckpt.get("optimizer")
    trained = stateless and int(ckpt["epoch"]) >= cfg.epochs
    if dist.is_main:  # temporary files of a checkpoint write a kill interrupted (atomic_write's siblings)
        for name in OUTPUT_FILES:
            for tmp in run_dir.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
    dist.barrier()

    # -- data, model, optimiser, loss ----------------------------------------------------------
    seed_everything(cfg.seed)
    sync_bn = dist.enabled and device.type == "cuda"  # SyncBatchNorm needs a GPU
    # a non-finite loss names the batch's images: under DDP those of this process's share
    who = f"{spec.run_id} (process {dist.rank} of {dist.world_size})" if dist.enabled else spec.run_id
    train_ds, sampler, train_loader, loader_gen, val_loader = _loaders(spec, preprocessed_dir, splits_dir, dist, sync_bn)
    image_size = train_ds.image_size
    graph_off = cuda_graph_off_reason(cfg.cuda_graph, device, dist.world_size, cfg.compile)
    model, optimizer, scheduler = _model_and_optim(spec, device, capturable=graph_off is None)
    class_weights = (None if cfg.loss.class_weights is not None
                     else _class_weights(preprocessed_dir, spec.data.train, train_ds.ids))
    loss_args = (cfg.loss, class_weights, int(spec.model_kwargs.get("num_classes", 1)),
                 bool(spec.model_kwargs.get("deep_supervision", False)))
    # On the run's device: the class weights' buffer, which a CPU copy would send to the GPU at every
    # loss call (a host sync a step; a copy no CUDA-graph capture allows).
    loss_fn = build_loss(*loss_args).to(device)  # validation: rank 0 alone, its own images
    # Training under DDP: the loss's sums over the whole step's batch (every process's share of it).
    train_loss_fn = build_loss(*loss_args, sum_across=dist.sum_across()).to(device) if dist.enabled else loss_fn

    # -- resume ---------------------------------------------------------------------------------
    history: list[dict] = []
    best = {"epoch": 0, "score": -math.inf}
    start_epoch = 0
    # A new best goes to best.pt when a worse epoch follows it, when the run ends, or at once if
    # best.pt is BEST_PT_MAX_AGE_S old: a short run improves almost every epoch (the demo's baselines
    # wrote 8 GB of best.pt). Until then last.pt holds the best weights, and this snapshot of them.
    pending_best: Optional[dict] = None
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        if not trained:
            optimizer.load_state_dict(ckpt["optimizer"])
            for group in optimizer.param_groups:  # the checkpoint's flag is its run's, not this one's
                group["capturable"] = graph_off is None
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"])
        history = [dict(r) for r in ckpt["history"]]
        best = {"epoch": int(ckpt.get("best_epoch", 0)), "score": float(ckpt.get("best_score", -math.inf))}
        start_epoch = int(ckpt["epoch"])
        if dist.is_main and start_epoch < cfg.epochs and best["epoch"] == start_epoch:  # best.pt may be behind
            pending_best = _checkpoint(spec, identity, model, image_size, start_epoch, history, best, with_state=False,
                                       snapshot=True)
        if dist.is_main:
            _say(f"{spec.run_id}: resuming after epoch {start_epoch} of {cfg.epochs}" if start_epoch < cfg.epochs
                 else f"{spec.run_id}: trained ({start_epoch} epochs) but not finished; finishing")
        ckpt = None  # free the memory

    raw_model = model
    if dist.enabled:
        if sync_bn:  # BatchNorm statistics over the step's whole batch, as in one process
            model = raw_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        model = torch.compile(model)
    channels_last = device.type == "cuda" and cfg.channels_last
    graphed = None
    if graph_off is None:
        step_loss = functools.partial(forward_loss, model, train_loss_fn, device=device, bf16=cfg.bf16,
                                      cpu_bf16=cfg.cpu_bf16)
        graphed = GraphedTrainStep(model, optimizer, step_loss, batch_size=train_loader.batch_size)

    # -- tracking -------------------------------------------------------------------------------
    provenance = collect(device)  # the MLflow tags and run.json: commit, data hash, versions, device
    logger = NullRunLogger()
    if dist.is_main and tracking_ctx is not None:
        # The code and inputs hashes are matched too: a run trained again after a code or data change
        # gets a new MLflow run beside the old one instead of appending to its history.
        run_tags = _run_tags(spec, provenance, profile, params_digest)
        match = {f"tcnet.{k}": identity[k] for k in ("code_hash", "inputs_hash")}
        logger = tracking_ctx.run_logger(spec.run_id, config_hash, run_tags, match_tags=match,
                                         known_mlflow_run_id=info.get("mlflow_run_id", ""))
        if start_epoch == 0 and logger.metric_steps("train_loss"):
            # Started again from epoch 0 (last.pt unusable or deleted) where MLflow holds epochs of an
            # earlier try: a new MLflow run, or the two tries' series would interleave in one.
            tracking_ctx.supersede(logger.run_id, spec.run_id)
            _say(f"{spec.run_id}: MLflow run {logger.run_id} holds an earlier try's epochs; marked superseded, "
                 "logging to a new run")
            logger = tracking_ctx.run_logger(spec.run_id, config_hash, run_tags, match_tags=match)
    record = {
        "run": {**to_dict(spec), "run_id": spec.run_id}, "run_id": spec.run_id, "experiment": spec.experiment,
        **identity, "mlflow_run_id": logger.run_id, "tracking_uri": logger.uri,
        "mlflow_experiment_id": getattr(tracking_ctx, "experiment_id", "") if logger.run_id else "",
        "pipeline_run": getattr(tracking_ctx, "pipeline_run", "") if logger.run_id else "",
        "model_name": spec.model, "image_size": image_size, "epochs": cfg.epochs,
        "n_train": len(train_ds), "n_val": len(val_loader.dataset) if val_loader is not None else 0,
        "device": str(device), "world_size": dist.world_size, "complete": False,
        "batch_per_process": train_loader.batch_size,
        "best_epoch": best["epoch"], "best_val_DI": _finite_or_none(best["score"]),
        "seed": cfg.seed, "provenance": provenance,  # with --no-mlflow too
    }
    if dist.is_main:
        _write_json(run_dir / "run.json", record)

    with logger.active(system_metrics=mlflow_cfg.system_metrics):
        if dist.is_main:
            _log_start(logger, spec, record, history)

        # -- epochs -----------------------------------------------------------------------------
        t_run = best_saved_at = time.perf_counter()
        for epoch in range(start_epoch + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            train_ds.set_epoch(epoch)
            sampler.set_epoch(epoch)
            loader_gen.manual_seed(epoch_seed(cfg.seed, epoch))
            lr = float(optimizer.param_groups[0]["lr"])
            try:
                res = train_one_epoch(model, train_loader, train_loss_fn, optimizer, device, epoch=epoch, run_id=who,
                                      bf16=cfg.bf16, cpu_bf16=cfg.cpu_bf16, channels_last=channels_last,
                                      progress=progress and dist.is_main,
                                      desc=f"{spec.run_id} {epoch}/{cfg.epochs}", graphed=graphed)
            except NonFiniteLossError as e:
                if start_epoch == 0 or epoch != start_epoch + 1:
                    raise
                # The per-epoch last.pt has no CRC (save_checkpoint(crc32=False)): bytes changed on disk
                # load without a word, and the first epoch after them is where that shows
                raise NonFiniteLossError(
                    f"{e}; this run resumed after epoch {start_epoch} from {run_dir / 'last.pt'}, whose per-epoch "
                    "copy carries no checksum: if that file may have been damaged, delete it to train the run "
                    "from the start") from None
            loss_sum, images = dist.all_sum([res.loss * res.images, res.images])
            _check_weights_finite(raw_model, who, epoch, run_dir / "last.pt")  # the same weights on every process
            val = validate(raw_model, val_loader, loss_fn, device, bf16=cfg.bf16, cpu_bf16=cfg.cpu_bf16,
                           channels_last=channels_last) \
                if dist.is_main else {}
            dist.barrier()
            scheduler.step()
            row = {"epoch": epoch, "train_loss": loss_sum / max(images, 1), **val, "lr": lr,
                   "seconds": time.perf_counter() - t0, "images_per_s": images / max(res.seconds, 1e-9)}
            history.append(row)
            if not dist.is_main:
                continue
            final = epoch == cfg.epochs
            if math.isnan(row["val_DI"]) or row["val_DI"] > best["score"]:  # no val images: the last epoch is best
                best = {"epoch": epoch, "score": -math.inf if math.isnan(row["val_DI"]) else row["val_DI"]}
                write_best = final or time.perf_counter() - best_saved_at >= BEST_PT_MAX_AGE_S
                pending_best = _checkpoint(spec, identity, raw_model, image_size, epoch, history, best, with_state=False,
                                           snapshot=not write_best)
            else:
                write_best = pending_best is not None  # worse: best.pt catches up before last.pt moves on
            # An earlier epoch's best.pt goes before last.pt moves past it; this epoch's after last.pt
            # holds it. Either way a crash in between leaves best.pt at an epoch last.pt has recorded:
            # a resume then catches it up (pending_best) or re-runs the epoch. This epoch's best.pt
            # written first, then a crash, then the re-run epoch scoring lower (GPU runs are not
            # bit-identical) left best.pt holding weights of an epoch no history has.
            catch_up = write_best and pending_best["epoch"] < epoch
            if catch_up:
                save_checkpoint(pending_best, run_dir / "best.pt")
            # The final epoch's last.pt drops the optimizer, scheduler and RNG state (Adam's two
            # moments are 2/3 of a checkpoint): a finished run never resumes (more epochs is another
            # config hash), and writing the full state only to replace it at once cost a baseline ~1 s
            # a run (300 MB, fsync). The resume state skips torch.save's CRC-32 (half the save's time);
            # the final last.pt keeps it, and loads check it.
            save_checkpoint(_checkpoint(spec, identity, raw_model, image_size, epoch, history, best, optimizer, scheduler,
                                        with_state=not final), run_dir / "last.pt", crc32=final)
            if write_best and not catch_up:
                save_checkpoint(pending_best, run_dir / "best.pt")
            if write_best:
                pending_best, best_saved_at = None, time.perf_counter()
            with atomic_write(run_dir / "history.csv") as f:
                f.write(history_rows_csv(history))
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=epoch)
            _say(f"{spec.run_id} epoch {epoch}/{cfg.epochs}: train_loss {row['train_loss']:.4f}, "
                 f"val_loss {row['val_loss']:.4f}, val_DI {row['val_DI']:.4f}, lr {lr:.2e}, "
                 f"{row['seconds']:.1f} s, {row['images_per_s']:.1f} img/s")
            if epoch == start_epoch + 1:
                _say_lk_choices(spec.run_id, record)

        if dist.is_main:
            record["train_seconds"] = time.perf_counter() - t_run
            if start_epoch < cfg.epochs:
                _say_cuda_graph(spec.run_id, record, graphed, graph_off, device)
            if start_epoch >= cfg.epochs:  # resumed after the final epoch's last.pt: nothing trained here
                if not trained:  # its full state (written before the tenth session) is not needed any more
                    save_checkpoint(_checkpoint(spec, identity, raw_model, image_size, start_epoch, history, best,
                                                with_state=False), run_dir / "last.pt")
                if best["epoch"] == start_epoch:  # a crash between the final last.pt and its best.pt
                    save_checkpoint(_checkpoint(spec, identity, raw_model, image_size, start_epoch, history, best,
                                                with_state=False), run_dir / "best.pt")
                # A crash between that last.pt and its history.csv left the file an epoch short.
                with atomic_write(run_dir / "history.csv") as f:
                    f.write(history_rows_csv(history))
            _finish(logger, spec, run_dir, record, history, best, image_size, mlflow_cfg)
    dist.barrier()
    if not dist.is_main:  # rank 0 wrote the final record
        return _read_json(run_dir / "run.json") or record
    return record


def _say_lk_choices(run_id: str, record: dict) -> None:
    """What ``lk_impl: auto`` measured so far in this process (CUDA only: tcnet/models/lk_tune.py),
    once a run's first epoch has run its shapes: one line, and ``run.json``'s ``lk_auto_choices``."""
    from collections import Counter

    from tcnet.models.lk_tune import cached_choices

    counts = Counter(cached_choices().values())
    if not counts:
        return
    record["lk_auto_choices"] = dict(sorted(counts.items()))
    _say(f"{run_id}: lk_impl auto measured {sum(counts.values())} large-kernel call shape(s) in this process: "
         + ", ".join(f"{impl} {n}" for impl, n in sorted(counts.items())))


def _say_cuda_graph(run_id: str, record: dict, graphed, off_reason: Optional[str], device: torch.device) -> None:
    """After a run's epochs on CUDA: whether its steps replayed a CUDA graph (train.cuda_graph), and
    ``run.json``'s ``cuda_graph`` (captures, replays and eager steps of this process; or why not)."""
    if device.type != "cuda":
        return
    if graphed is None:
        record["cuda_graph"] = {"off": off_reason}
        _say(f"{run_id}: train steps run eagerly ({off_reason})")
        return
    record["cuda_graph"] = graphed.summary()
    _say(f"{run_id}: train steps from a CUDA graph (train.cuda_graph): {graphed.replays} replayed, "
         f"{graphed.eager_steps} eager (the first {graphed.warmup} full batches warm up; short batches), "
         f"captured {graphed.captures} time(s) (again for each new learning rate)")


def _check_weights_finite(model, who: str, epoch: int, last: Path) -> None:
    """Raise :class:`NonFiniteLossError` when an optimiser step of ``epoch`` left NaN/inf in the
    weights or BatchNorm statistics: every loss was finite, so the loop did not stop, and saving them
    would make every resume fail at its first batch with an error that blames the data."""
    floats = [t for t in model.state_dict().values() if t.is_floating_point()]
    if bool(torch.stack([torch.isfinite(t).all() for t in floats]).all()):
        return
    raise NonFiniteLossError(
        f"run {who}: the weights became NaN or infinite during epoch {epoch} although every batch's loss was "
        f"finite (an optimiser step overflowed); nothing of epoch {epoch} was saved ({last} holds the epoch "
        "before, if any); lower train.lr or turn off bf16")


def _finite_or_none(x) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def _log_start(logger, spec: RunSpec, record: dict, history: list[dict]) -> None:
    """Params and the resolved run config; epochs trained before a crash whose metrics never
    reached MLflow (killed between the checkpoint and the log call) are logged now."""
    logger.log_params({"run": to_dict(spec), "run_id": spec.run_id, "image_size": record["image_size"],
                       "n_train": record["n_train"], "n_val": record["n_val"], "world_size": record["world_size"]})
    logger.log_dict(record["run"], "config/run_spec.json")
    logged = logger.metric_steps("train_loss")
    for row in history:
        if int(row["epoch"]) not in logged:
            logger.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def _finish(logger, spec: RunSpec, run_dir: Path, record: dict, history: list[dict], best: dict, image_size: int,
            mlflow_cfg: MlflowConfig) -> None:
    """history.csv, the final run.json, and the MLflow summary (best score, checkpoint path, model)."""
    from tcnet.training.loop import history_rows_csv

    if not history:
        raise RuntimeError(f"run {spec.run_id}: no epoch was trained")
    if not (run_dir / "history.csv").is_file():
        with atomic_write(run_dir / "history.csv") as f:
            f.write(history_rows_csv(history))
    best_di = next((r.get("val_DI") for r in history if r["epoch"] == best["epoch"]), None)
    record.update(complete=True, best_epoch=best["epoch"], best_val_DI=_finite_or_none(best_di))
    logger.set_tags({"tcnet.checkpoint": str((run_dir / "best.pt").resolve()), "tcnet.best_epoch": str(best["epoch"])})
    logger.log_metrics({"best_val_DI": record["best_val_DI"], "best_epoch": best["epoch"]}, step=best["epoch"])
    logger.log_artifact(run_dir / "history.csv")
    if mlflow_cfg.log_models and logger.run_id:
        from tcnet.checkpoint import load_model
        from tcnet.tracking import log_model

        best_model, _ = load_model(run_dir / "best.pt")
        record["mlflow_model_uri"] = log_model(best_model, image_size, checkpoint=run_dir / "best.pt",
                                               metadata={"run_id": spec.run_id, "config_hash": record["config_hash"]})
    _write_json(run_dir / "run.json", record)
    logger.log_artifact(run_dir / "run.json")


def select_runs(specs: list[RunSpec], run_ids: Optional[Sequence[str]], experiment: str) -> list[RunSpec]:
    if not run_ids:
        return specs
    known = {s.run_id: s for s in specs}
    unknown = [r for r in run_ids if r not in known]
    if unknown:
        from tcnet.config import did_you_mean

        raise ConfigError(
            f"experiment {experiment!r} has no run {unknown[0]!r}{did_you_mean(unknown[0], known)}; "
            f"valid: {', '.join(known)}"
        )
    return [known[r] for r in run_ids]


def preflight(params: Params, experiment: str, run_ids: Optional[Sequence[str]], splits_dir, processes: int = 1,
              what: str = "--nproc") -> list[RunSpec]:
    """The runs to train, after every check that can fail before a process or an epoch starts (a typo
    in the last run's model fails now, not hours in); ``tcnet train --nproc`` calls it before it
    launches the processes, so such an error is one line and status 2, not N tracebacks."""
    from tcnet.models.registry import check_runs_models
    from tcnet.stages.evaluate import eval_ids

    specs = select_runs(expand_runs(params, experiment), run_ids, experiment)
    check_runs_models(params, experiments=[experiment])
    for spec in specs:  # a run whose evaluation part is empty (e.g. DRIVE without test labels)
        eval_ids(spec, splits_dir)
    devices = sorted({s.train.device for s in specs})  # experiment or run overrides of train.device count
    if len(devices) > 1:
        raise ValueError(f"experiment {experiment!r}: its runs ask for different train.device values "
                         f"({', '.join(devices)}); train them in separate calls (--run)")
    check_batch_split(specs, processes, what)
    cuda = torch.cuda.is_available() and devices[0] not in ("cpu", "mps")
    ones = [s for s in specs if processes > 1 and s.train.batch_size == processes]
    if ones and not cuda:
        raise ConfigError(
            f"{what} {processes} would give each process 1 image of train.batch_size {ones[0].train.batch_size} "
            f"(run {ones[0].run_id}{' and others' if len(ones) > 1 else ''}): on CPU each process normalises its "
            "share alone (SyncBatchNorm needs GPUs), and BatchNorm statistics of one image are degenerate (they fail "
            "outright on a 1x1 map: a small image's coarsest scale, DeepLab's image pooling); use fewer processes")
    return specs


def _own_run_folder(names: set[str]) -> bool:
    """A run trained in place (no ``--checkpoint-dir``: no ``.tcnet-output`` mark), finished or
    stopped part-way: a checkpoint or run.json, train's other files, and the temporary file of a
    save a kill cut short (``atomic_path``: ``.<name>.<random>.tmp``)."""
    def saving(n: str) -> bool:
        return n.endswith(".tmp") and any(n.startswith(f".{f}.") for f in OUTPUT_FILES)

    return bool(names & {"best.pt", "last.pt", "run.json"}) and all(n in OUTPUT_FILES or saving(n) for n in names)


def publish(run_dir: Path, dest: Path) -> None:
    """Copy a finished run's files from ``run_dir`` to ``dest``, replacing it whole (never half-copied)."""
    with atomic_dir(dest, owner="train", own=_own_run_folder) as tmp:
        for name in OUTPUT_FILES:
            if (run_dir / name).is_file():
                shutil.copy2(run_dir / name, tmp / name)


def run(params: Params, experiment: str, preprocessed_dir, splits_dir, out_dir,
        run_ids: Optional[Sequence[str]] = None, *, mlflow: Optional[bool] = None, progress: bool = True,
        checkpoint_dir=None) -> dict:
    """Train every run of ``experiment`` (or only ``run_ids``) into ``out_dir/<experiment>/<run_id>/``.

    With ``checkpoint_dir``, each run trains (and resumes) in ``checkpoint_dir/<experiment>/<run_id>/``
    and, once finished, its files are copied to ``out_dir`` (:func:`publish`).

    MLflow (unless ``mlflow=False`` or ``TCNET_NO_MLFLOW=1``): the store is initialised and the
    experiment's parent run found or created once, here, before any run starts.

    Returns ``{"experiment", "runs": [each run's run.json, plus "skipped": True for a run found
    already trained]}``.
    """
    from tcnet.tracking import open_tracker, pipeline_tags, tracking_enabled
    from tcnet.training.runtime import describe_device, init_distributed, resolve_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    specs = preflight(params, experiment, run_ids, splits_dir, world, "WORLD_SIZE")  # also under one's own torchrun
    dist = init_distributed(specs[0].train.device)
    digest = params_hash(params)
    tracker = None
    if dist.is_main:
        device = resolve_device(specs[0].train.device, dist.local_rank)
        _say(describe_device(device, specs[0].train.device))
        if tracking_enabled(mlflow):
            tracker = open_tracker(experiment, params.mlflow, params=params, base_tags=pipeline_tags(params, device))
    out_dir = Path(out_dir)
    work_dir = Path(checkpoint_dir) if checkpoint_dir else out_dir
    if work_dir.resolve() == out_dir.resolve():
        work_dir = out_dir  # nothing to copy
    else:  # where each finished run will be copied: none of them a folder of someone else's, found hours later
        for spec in specs:
            check_replaceable(out_dir / experiment / spec.run_id, "train", _own_run_folder)
    _SAID.clear()  # "said once" per call: a second call in the same process says it again
    results = []
    for i, spec in enumerate(specs, 1):
        if dist.is_main:  # a line before the first epoch's: off a terminal, epochs are minutes apart
            _say(f"run {i}/{len(specs)}: {spec.run_id} ({spec.model}, {spec.train.epochs} epochs)")
        results.append(train_run(spec, preprocessed_dir, splits_dir, work_dir / experiment / spec.run_id,
                                 params.mlflow, tracker, profile=params.profile, params_digest=digest,
                                 progress=progress,
                                 publish_to=None if work_dir is out_dir else out_dir / experiment / spec.run_id))
    return {"experiment": experiment, "runs": results}


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def add_arguments(parser) -> None:
    from tcnet.stages._cli import add_experiment_arguments, add_no_mlflow

    add_experiment_arguments(parser, "train")
    parser.add_argument("--out", default="outputs/models",
                        help="models root: writes OUT/<experiment>/<run_id>/ (default: outputs/models)")
    parser.add_argument("--checkpoint-dir", default="", metavar="DIR",
                        help="train and resume each run in DIR/<experiment>/<run_id>/ (a folder that outlives this "
                        "process, e.g. a volume that a retried Kubeflow task finds again) and copy each finished run "
                        "to OUT/<experiment>/<run_id>/, replacing it whole: a run of OUT's own or an empty folder, "
                        "never one holding other files (default: train in OUT itself)")
    parser.add_argument("--nproc", type=int, default=1, metavar="N",
                        help="train each run with N processes (DDP via torchrun: gloo on CPU, NCCL on CUDA); "
                        "train.batch_size stays the batch of one optimiser step, each process takes 1/N of it, "
                        "so N must divide it")
    add_no_mlflow(parser)


def main(args) -> int:
    from tcnet.training.runtime import in_torchrun, relaunch_with_torchrun, shutdown_distributed

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and not in_torchrun():
        # Before any process starts: errors of the params or data as one line (status 2), not N tracebacks.
        preflight(load_params(args.params), args.experiment, args.runs, args.splits, args.nproc)
        argv = ["train", "--params", args.params, "--experiment", args.experiment, "--preprocessed",
                args.preprocessed, "--splits", args.splits, "--out", args.out]
        if args.checkpoint_dir:
            argv += ["--checkpoint-dir", args.checkpoint_dir]
        for r in args.runs or []:
            argv += ["--run", r]
        if args.no_mlflow:
            argv.append("--no-mlflow")
        return relaunch_with_torchrun(args.nproc, argv)
    params = load_params(args.params)
    try:
        result = run(params, args.experiment, args.preprocessed, args.splits, args.out, args.runs,
                     mlflow=False if args.no_mlflow else None, checkpoint_dir=args.checkpoint_dir or None)
    finally:
        shutdown_distributed()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    runs = result["runs"]
    skipped = sum(bool(r.get("skipped")) for r in runs)
    trained = sum(bool(r.get("complete")) and not r.get("skipped") for r in runs)
    already = f", {skipped} already trained (skipped)" if skipped else ""
    _say(f"{args.experiment}: {trained} of {len(runs)} run(s) trained{already}, into {Path(args.out) / args.experiment}")
    return 0


__all__ = ["train_run", "run", "publish", "select_runs", "add_arguments", "main", "NonFiniteLossError"]

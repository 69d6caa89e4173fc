"""Typed configuration: ``params.yaml`` -> frozen dataclasses.

One dataclass per ``params.yaml`` section. Unknown keys are an error that lists the valid keys
(with a "did you mean"), so a typo never silently falls back to a default. Every stage takes
its section(s) of :class:`Params`; nothing else reads ``params.yaml``.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Optional, Union

import yaml

DATASETS = ("isic2017", "isic2018", "ph2", "drive", "chase_db1")
RETINA_DATASETS = ("drive", "chase_db1")
METRIC_NAMES = ("AC", "SE", "SP", "JA", "DI", "TJA", "AUC")


def dataset_aggregation(dataset: str) -> str:
    """A dataset's scoring convention: ISIC/PH2 the mean of per-image scores (the ISIC challenge's);
    retina pooled over FOV pixels."""
    return "pooled" if dataset in RETINA_DATASETS else "mean"


class ConfigError(ValueError):
    """A params file (or override) that does not fit the schema; the message says how to fix it."""


def did_you_mean(value: str, choices) -> str:
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(what: str, value, choices) -> None:
    """Raise ``ConfigError`` naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ConfigError(
            f"unknown {what} {value!r}{did_you_mean(value, choices)}; valid: {', '.join(map(str, choices))}"
        )


# ----------------------------------------------------------------------------------------------
# Sections
# ----------------------------------------------------------------------------------------------


def check_range(name: str, pair: tuple[float, float]) -> None:
    """Refuse a ``[low, high]`` setting unless ``0 < low <= high`` (finite)."""
    lo, hi = pair
    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ConfigError(f"{name} must be [low, high] with 0 < low <= high, got {list(pair)}")


@dataclass(frozen=True)
class PreprocessConfig:
    raw_dir: str = "data"  # root holding one folder per dataset (data/isic2017, data/drive, ...)
    datasets: tuple[str, ...] = DATASETS
    image_size: int = 64  # square side after resizing; multiple of 32
    image_size_overrides: dict[str, int] = field(default_factory=dict)  # per dataset, e.g. {drive: 128}
    skip_invalid: bool = False  # True: skip and report bad pairs instead of stopping
    workers: int = 0  # process-pool size; 0 = the CPUs this process may use (tcnet.utils.cpus)
    # class weights (inverse pixel frequency, background 1; each run's and stats.json's) are clipped to this range
    class_weight_clip: tuple[float, float] = (1.0, 50.0)

    def size_for(self, dataset: str) -> int:
        return int(self.image_size_overrides.get(dataset, self.image_size))

    def validate(self) -> None:
        for d in self.datasets:
            check_choice("dataset", d, DATASETS)
        for d in self.image_size_overrides:
            check_choice("dataset in preprocess.image_size_overrides", d, DATASETS)
        for key, s in {"preprocess.image_size": self.image_size,
                       **{f"preprocess.image_size_overrides.{d}": v for d, v in self.image_size_overrides.items()}}.items():
            if s <= 0 or s % 32:
                raise ConfigError(f"{key} must be a positive multiple of 32 (the models halve it five times), got {s}")
        if self.workers < 0:
            raise ConfigError(f"preprocess.workers must be >= 0 (0 = all cores), got {self.workers}")
        check_range("preprocess.class_weight_clip", self.class_weight_clip)

    def repo_data_path(self) -> str:
        """``raw_dir`` as a path inside the repository, where ``<raw_dir>.dvc`` tracks it: what the
        Kubeflow pipeline fetches (a pod has no checkout, only the repository at a revision)."""
        path = PurePosixPath(self.raw_dir)
        if path.is_absolute() or ".." in path.parts or str(path) == ".":
            raise ConfigError(f"preprocess.raw_dir {self.raw_dir!r}: the pipeline fetches the data from the git "
                              "repository, so it must be a folder inside it tracked by <raw_dir>.dvc (e.g. data)")
        return path.as_posix()


@dataclass(frozen=True)
class SplitConfig:
    seed: int = 42
    cv_folds: int = 5  # k for the ISIC 2018 cross-validation (the paper's 1865/635 is about 3:1)
    retina_val_fraction: float = 0.2  # training images held out for checkpoint selection (DRIVE/CHASE)
    split_files: dict[str, str] = field(default_factory=dict)  # dataset -> user-supplied splits JSON

    def validate(self) -> None:
        if self.cv_folds < 2:
            raise ConfigError(f"split.cv_folds must be >= 2, got {self.cv_folds}")
        if not 0.0 <= self.retina_val_fraction < 1.0:
            raise ConfigError(f"split.retina_val_fraction must be in [0, 1), got {self.retina_val_fraction}")
        for d in self.split_files:
            check_choice("dataset in split.split_files", d, DATASETS)


@dataclass(frozen=True)
class LossConfig:
    ce_weight: float = 0.5  # lambda in L = lambda*WCE + (1-lambda)*Dice
    class_weights: Optional[tuple[float, ...]] = None  # None: from preprocess class statistics

    def validate(self) -> None:
        if not 0.0 <= self.ce_weight <= 1.0:
            raise ConfigError(f"loss.ce_weight must be in [0, 1], got {self.ce_weight}")
        if self.class_weights is not None and (
            len(self.class_weights) < 2 or not all(math.isfinite(w) and w > 0 for w in self.class_weights)
        ):
            raise ConfigError(f"loss.class_weights must be null (from preprocess) or >= 2 positive numbers, one per "
                              f"class (background first), got {list(self.class_weights)}")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 4
    lr: float = 1e-3  # Adam
    weight_decay: float = 0.0
    min_lr: float = 1e-6  # cosine annealing floor
    loss: LossConfig = field(default_factory=LossConfig)
    augment: bool = True
    # the augmentation (transforms.build_augment): shift of up to this fraction of the side each way,
    # isotropic scale in this range, each of the four transforms with probability augment_p
    augment_shift: float = 0.0625
    augment_scale: tuple[float, float] = (0.9, 1.1)
    augment_p: float = 0.5
    seed: int = 42
    deterministic: bool = True  # torch.use_deterministic_algorithms; bit-identical CPU resume
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # autocast to bfloat16 on CUDA
    # autocast to bfloat16 on CPU too (opt-in): train steps at 448² 1.3x (tcnet_base) to 1.8x (U-Net) faster
    # where the CPU has native bf16 (AVX512-BF16, AMX), none at the demo's 64²; other metrics than float32's
    # (docs/training.md)
    cpu_bf16: bool = False
    channels_last: bool = True  # memory format (CUDA only)
    compile: bool = False  # torch.compile (off: minutes of compile on CPU)
    # CUDA, one process, not compiled: the whole train step captured in a CUDA graph and replayed
    # (tcnet/training/cuda_graph.py; an H200's paper-profile step 2.3x faster). Inert on CPU. Opt-in
    # until the train stage's captured path has passed its CUDA tests on a GPU (docs/training.md).
    cuda_graph: bool = False
    max_train_images: Optional[int] = None  # cap on training images (smoke runs); None = all

    def validate(self) -> None:
        self.loss.validate()
        for key in ("epochs", "batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"train.lr must be a finite number > 0, got {self.lr}")
        for key in ("min_lr", "weight_decay", "num_workers"):
            if not getattr(self, key) >= 0 or not math.isfinite(getattr(self, key)):
                raise ConfigError(f"train.{key} must be a finite number >= 0, got {getattr(self, key)}")
        if self.min_lr > self.lr:  # cosine annealing would then raise the rate, not lower it
            raise ConfigError(f"train.min_lr ({self.min_lr:g}) must not exceed train.lr ({self.lr:g}): the cosine "
                              "schedule anneals from lr down to min_lr")
        if not 0 <= self.augment_shift < 0.5:
            raise ConfigError(f"train.augment_shift must be a fraction of the side in [0, 0.5), got {self.augment_shift}")
        check_range("train.augment_scale", self.augment_scale)
        if not 0 <= self.augment_p <= 1:
            raise ConfigError(f"train.augment_p must be a probability in [0, 1], got {self.augment_p}")
        if self.max_train_images is not None and self.max_train_images < 1:
            raise ConfigError(f"train.max_train_images must be >= 1 or null (all), got {self.max_train_images}")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError(f"train.device {self.device!r}: valid: auto, cpu, cuda, cuda:N")


EVAL_CHECKPOINTS = ("auto", "best", "last")


@dataclass(frozen=True)
class EvaluateConfig:
    threshold: float = 0.5  # probability threshold for the binary mask
    n_overlays: int = 4  # overlay PNGs written per run (a sample of images)
    save_masks: bool = True  # predicted masks as 0/255 PNG at the original size
    batch_size: int = 8
    # auto: best.pt, except where the scored images are the ones that picked the best epoch (the
    # training dataset's val part: ISIC CV folds, ISIC 2017 val), which would flatter it: last.pt
    checkpoint: str = "auto"

    def validate(self) -> None:
        check_choice("evaluate.checkpoint", self.checkpoint, EVAL_CHECKPOINTS)
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"evaluate.threshold must be a probability in [0, 1], got {self.threshold}")
        if self.n_overlays < 0:
            raise ConfigError(f"evaluate.n_overlays must be >= 0, got {self.n_overlays}")
        if self.batch_size < 1:
            raise ConfigError(f"evaluate.batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class CompareConfig:
    bootstrap: int = 2000  # bootstrap resamples for the CI of the mean paired difference
    confidence: float = 0.95
    data_label: str = "synthetic look-alike"  # which data the numbers come from; "real" for real data
    champion_experiment: str = "isic2018_cv"  # experiment whose best TCNet is registered as champion
    registered_model: str = "tcnet"

    def validate(self) -> None:
        if self.bootstrap < 1:
            raise ConfigError(f"compare.bootstrap must be >= 1 (resamples), got {self.bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"compare.confidence must be in (0, 1), e.g. 0.95, got {self.confidence}")


@dataclass(frozen=True)
class MlflowConfig:
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    log_models: bool = True  # log the trained model of each run
    system_metrics: bool = True


@dataclass(frozen=True)
class DataPair:
    """Which data a run trains on and which it is evaluated on."""

    name: str  # label used in run ids, e.g. "drive"
    train: str  # dataset whose split (fold train/val) trains the model
    eval: str = ""  # dataset evaluated ("" = same as train)
    part: Literal["val", "test"] = "val"  # val: the fold's validation ids; test: the split's test ids

    @property
    def eval_dataset(self) -> str:
        return self.eval or self.train

    def validate(self, where: str = "data") -> None:
        try:
            check_choice("dataset", self.train, DATASETS)
            check_choice("dataset", self.eval_dataset, DATASETS)
            check_choice("evaluation part", self.part, ("val", "test"))
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        if self.train in TEST_ONLY_DATASETS:
            raise ConfigError(f"{where}.train: {self.train} is a test-only dataset and cannot be trained on; train "
                              f"on another dataset and set eval: {self.train}, part: test")
        if self.part == "val" and self.eval_dataset in TEST_ONLY_DATASETS:  # before any run trains
            raise ConfigError(f"{where}.part: {self.eval_dataset} is a test-only dataset, it has no folds to take "
                              f"'val' from (part defaults to val); set part: test")


@dataclass(frozen=True)
class RunVariant:
    """One variant of an experiment: a model and what differs from the experiment's defaults."""

    name: str
    model: str = ""  # registry name ("" = the experiment's model)
    model_overrides: dict[str, Any] = field(default_factory=dict)  # kwargs of create_model
    train: dict[str, Any] = field(default_factory=dict)  # overrides of train.* (nested: {loss: {ce_weight: .1}})
    label: str = ""  # how tables name it ("" = name)


@dataclass(frozen=True)
class ExperimentConfig:
    title: str
    reproduces: str  # "Fig. 1", "Table 3", ...
    data: tuple[DataPair, ...]
    runs: tuple[RunVariant, ...]
    model: str = "tcnet_tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # experiment-wide overrides of train.*
    folds: Optional[tuple[int, ...]] = None  # None = every fold of the split
    metrics: tuple[str, ...] = ("AC", "SE", "SP", "JA", "DI")
    # mean | pooled; "" = the datasets' convention (dataset_aggregation), the same for every eval dataset
    aggregation: str = ""
    baseline_of: str = ""  # run name of TCNet, against which paired statistics are computed
    paper_key: str = ""  # key in paper/reported.yaml

    def __post_init__(self) -> None:
        conventions = {dataset_aggregation(d.eval_dataset) for d in self.data}
        if self.aggregation == "" and len(conventions) == 1:  # a mix needs an explicit choice (validate says so)
            object.__setattr__(self, "aggregation", conventions.pop())

    def validate(self, exp_id: str) -> None:
        if not self.data or not self.runs:
            raise ConfigError(f"experiments.{exp_id}: needs at least one data pair and one run")
        if exp_id == RESERVED_EXPERIMENT:
            raise ConfigError(f"experiments.{exp_id}: the name {exp_id!r} is taken by the MLflow experiment of the "
                              "data stages (tcnet/data: preprocess and split); choose another")
        for what, name in ([("experiment id", exp_id)] + [("data name", d.name) for d in self.data]
                           + [("run name", r.name) for r in self.runs]):
            if not SAFE_NAME.fullmatch(name) or "__" in name:  # run ids are folder names: <data>__<run>__fold<k>
                raise ConfigError(f"experiments.{exp_id}: {what} {name!r} must be letters, digits, '.', '_' or "
                                  "'-' (no '/', no '__'): it becomes a folder name")
        for i, d in enumerate(self.data):
            d.validate(f"experiments.{exp_id}.data[{i}]")
        names = [r.name for r in self.runs]
        if len(set(names)) != len(names):
            raise ConfigError(f"experiments.{exp_id}: run names must be unique, got {names}")
        for m in self.metrics:
            check_choice(f"metric in experiments.{exp_id}.metrics", m, METRIC_NAMES)
        if self.aggregation == "":
            raise ConfigError(
                f"experiments.{exp_id}: evaluates retina datasets (pooled over FOV pixels by convention) and "
                "skin datasets (per-image mean) together; set aggregation: pooled or aggregation: mean")
        check_choice(f"aggregation in experiments.{exp_id}", self.aggregation, ("mean", "pooled"))
        if self.baseline_of:
            check_choice(f"experiments.{exp_id}.baseline_of run", self.baseline_of, names)


@dataclass(frozen=True)
class Params:
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    experiments: dict[str, ExperimentConfig] = field(default_factory=dict)
    profile: str = "demo"  # a label recorded with every run (demo | paper | ...)

    def validate(self) -> "Params":
        self.preprocess.validate()
        self.split.validate()
        self.train.validate()
        self.evaluate.validate()
        self.compare.validate()
        for exp_id, exp in self.experiments.items():
            exp.validate(exp_id)
            for d in exp.data:
                for ds in (d.train, d.eval_dataset):
                    if ds not in self.preprocess.datasets:
                        raise ConfigError(
                            f"experiments.{exp_id} uses dataset {ds!r}, which preprocess.datasets "
                            f"does not include ({', '.join(self.preprocess.datasets)})"
                        )
            expand_runs(self, exp_id)  # each run's merged train.* overrides checked now, not at train time
        return self

    def experiment(self, exp_id: str) -> ExperimentConfig:
        if not self.experiments:
            raise ConfigError(f"unknown experiment {exp_id!r}: the params file declares no experiments "
                              "(an 'experiments:' section; see params.yaml and docs/experiments.md)")
        check_choice("experiment", exp_id, list(self.experiments))
        return self.experiments[exp_id]


# ----------------------------------------------------------------------------------------------
# dict -> dataclass
# ----------------------------------------------------------------------------------------------


def _is_optional(tp) -> tuple[bool, Any]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def _convert(tp, value, where: str):
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    tp = inner
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if Ellipsis in args:  # tuple[str, ...]: any length, one type
            return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):  # tuple[float, float]: exactly two, each its own type
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is Literal:
        check_choice(where, value, typing.get_args(tp))
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            hint = ""
            if isinstance(value, str) and re.fullmatch(r"[-+]?\d+[eE][-+]?\d+", value.strip()):
                hint = f" (YAML 1.1 reads {value} as text: write {value.lower().replace('e', '.0e', 1)})"
            raise ConfigError(f"{where}: expected a number, got {value!r}{hint}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp} at {where}")  # a schema bug, not a user error


def from_dict(cls, data: dict, where: str = ""):
    """Build dataclass ``cls`` from ``data``; unknown keys raise with the valid ones listed."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(
                f"unknown config key {path!r}{did_you_mean(key, fields)}; valid keys here: {', '.join(fields)}"
            )
        kwargs[key] = _convert(hints[key], value, path)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{where or cls.__name__}: missing required key(s) {', '.join(missing)}")
    return cls(**kwargs)


def to_dict(obj) -> dict:
    """Plain-data (YAML/JSON-safe) form of a config dataclass."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(obj)


def flow_yaml(data, sort_keys: bool = False) -> str:
    """``data`` as one line of flow-style YAML (a Kubeflow parameter value or default); refuses data
    that would not read back the same."""
    line = yaml.safe_dump(data, default_flow_style=True, width=2**31, sort_keys=sort_keys).strip()
    if "\n" in line or yaml.safe_load(line) != data:  # a schema change this cannot carry: say so
        raise ValueError("the YAML data does not round-trip as one line of flow YAML")
    return line


def data_task_params(params: Params, dataset: str = "") -> dict[str, dict]:
    """What each data task of the Kubeflow pipeline reads, as plain data, defaults included: its cache
    key, so that an edit to ``train`` or ``experiments`` does not fetch and preprocess the data again.
    ``fetch_data`` gets the data's folder and the datasets, ``preprocess`` its section, ``split`` its
    section: an edit to ``split`` re-splits, it does not fetch or preprocess the data again.

    With ``dataset`` (one of ``preprocess.datasets``): for that dataset alone (``datasets:
    [dataset]``, only its own image-size override and split file), so that the pipeline's
    per-dataset data tasks are cached apart: an edit to DRIVE's settings leaves the ISIC tasks'
    cache entries as they were."""
    pre, spl = to_dict(params.preprocess), to_dict(params.split)
    if dataset:
        if dataset not in params.preprocess.datasets:
            raise ConfigError(f"dataset {dataset!r} is not preprocessed (preprocess.datasets: "
                              f"{', '.join(params.preprocess.datasets)})")
        pre["datasets"] = [dataset]
        pre["image_size_overrides"] = {k: v for k, v in pre["image_size_overrides"].items() if k == dataset}
        spl["split_files"] = {k: v for k, v in spl["split_files"].items() if k == dataset}
    return {"fetch_data": {"preprocess": {"raw_dir": pre["raw_dir"], "datasets": pre["datasets"]}},
            "preprocess": {"preprocess": pre}, "split": {"split": spl}}


def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def setting_differences(old: dict, new: dict, *, ignore=(), common_only: bool = False) -> list[tuple[str, Any, Any]]:
    """``(dotted key, old, new)`` for every setting that differs between two nested dicts (numbers
    compared with ``math.isclose``; a key missing on one side is ``None`` there). ``ignore``: dotted
    keys to skip; ``common_only``: compare only keys present on both sides (an older record that
    lacks a newer setting is not a difference)."""
    out: list[tuple[str, Any, Any]] = []

    def walk(a, b, where: str) -> None:
        if where in ignore:
            return
        if isinstance(a, dict) and isinstance(b, dict):
            keys = a.keys() & b.keys() if common_only else a.keys() | b.keys()
            for k in sorted(keys, key=str):
                walk(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        elif a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float))
                             and not isinstance(a, bool) and math.isclose(a, b)):
            out.append((where, a, b))

    walk(old, new, "")
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (YAML keeps the last one silently:
    a second ``train:`` block would replace the whole first)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping (the later one would win)", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml_mapping(path: str | Path, what: str = "file") -> dict:
    """A YAML file whose top level is a mapping; errors name the file and what is wrong."""
    path = Path(path)
    try:
        text = path.read_text()
        data = yaml.load(text, Loader=_UniqueKeyLoader)
        if data is None:
            raise ConfigError(f"{path}: the {what} is empty")
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except yaml.YAMLError as e:  # one line: where, then what (PyYAML's own text spans several)
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what_ = "; ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x)
        raise ConfigError(f"{path}: not valid YAML{where}: {what_ or str(e).splitlines()[0]}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text (UTF-8) file: {e.reason} at byte {e.start}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file. Errors name the file and the offending key."""
    path = Path(path)
    raw = read_yaml_mapping(path, "params file")
    try:
        return from_dict(Params, raw).validate()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def params_hash(obj) -> str:
    """Stable short hash of a config (dataclass or plain data)."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------------------------
# Experiments -> runs
# ----------------------------------------------------------------------------------------------


TEST_ONLY_DATASETS = ("ph2",)  # no training split: PH2 is the test set of the ISIC 2017 transfer


def n_folds(dataset: str, split: SplitConfig) -> int:
    """How many folds the split stage writes for ``dataset``: k for ISIC 2018, 0 for test-only, else 1."""
    if dataset in TEST_ONLY_DATASETS:
        return 0
    return split.cv_folds if dataset == "isic2018" else 1


# train.* keys that cannot change a run's results (DataLoader workers: each item is augmented with a
# seed of its own, tests/training; a CUDA graph replays the kernels the eager step launches, and is
# inert on CPU): changing them must not throw a finished run away.
HASH_EXCLUDED_TRAIN = ("num_workers", "cuda_graph")
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+")
RESERVED_EXPERIMENT = "data"  # tcnet.stages.data_tracking.DATA_EXPERIMENT (MLflow experiment tcnet/data)


@dataclass(frozen=True)
class RunSpec:
    """Everything one training + evaluation needs: the unit of the train and evaluate stages."""

    experiment: str
    variant: str
    label: str
    data: DataPair
    fold: int
    model: str
    model_kwargs: dict[str, Any]
    train: TrainConfig

    @property
    def run_id(self) -> str:
        """Path-safe id, also the run's folder under outputs/models/<experiment>/."""
        return f"{self.data.name}__{self.variant}__fold{self.fold}"

    def config_hash(self) -> str:
        """What the run's results depend on: the RunSpec without HASH_EXCLUDED_TRAIN keys."""
        d = to_dict(self)
        for key in HASH_EXCLUDED_TRAIN:
            d["train"].pop(key, None)
        return params_hash(d)


def check_batch_split(runs: typing.Iterable[RunSpec], processes: int, what: str = "--nproc") -> None:
    """Refuse ``processes`` (``--nproc``, the pipeline's GPUs per train task) unless it divides the
    ``train.batch_size`` of every run in ``runs`` (RunSpecs); the error names the runs and the counts
    that would do."""
    if processes <= 1:
        return
    runs = list(runs)
    bad = [r for r in runs if r.train.batch_size % processes]
    if not bad:
        return
    common = 0
    for r in runs:
        common = math.gcd(common, int(r.train.batch_size))
    fits = [d for d in range(1, common + 1) if common % d == 0]
    shown = ", ".join(f"{r.experiment}/{r.run_id} ({r.train.batch_size})" for r in bad[:4])
    raise ConfigError(
        f"{what} {processes} does not divide train.batch_size of {len(bad)} run(s) ({shown}{', ...' if len(bad) > 4 else ''}): "
        f"train.batch_size is the batch of one optimiser step, shared equally by the processes; use {what} "
        f"{' or '.join(map(str, fits))}, or batch sizes that are multiples of {processes}")


def expand_runs(params: Params, exp_id: str) -> list[RunSpec]:
    """All (data pair x variant x fold) runs of one experiment, with train overrides merged."""
    exp = params.experiment(exp_id)
    exp_base = deep_merge(to_dict(params.train), exp.train)
    exp_train = from_dict(TrainConfig, exp_base, f"experiments.{exp_id}.train")
    try:  # the experiment's own overrides first: a typo there is not the first run's
        exp_train.validate()
    except ConfigError as e:
        raise ConfigError(f"experiments.{exp_id}.train: {e}") from None
    runs = []
    for i, pair in enumerate(exp.data):
        pair.validate(f"experiments.{exp_id}.data[{i}]")  # (params never validated: from_dict alone)
        folds = exp.folds if exp.folds is not None else tuple(range(n_folds(pair.train, params.split)))
        for fold in folds:
            if not 0 <= fold < n_folds(pair.train, params.split):
                raise ConfigError(
                    f"experiments.{exp_id}.folds: fold {fold} does not exist for {pair.train} "
                    f"({n_folds(pair.train, params.split)} fold(s))"
                )
            for v in exp.runs:
                merged = deep_merge(exp_base, v.train)
                where = f"experiments.{exp_id}.runs.{v.name}"
                train = from_dict(TrainConfig, merged, f"{where}.train")
                try:
                    train.validate()
                except ConfigError as e:  # the key as the run sees it, where the value came from
                    raise ConfigError(f"{where}: {e}") from None
                runs.append(
                    RunSpec(
                        experiment=exp_id,
                        variant=v.name,
                        label=v.label or v.name,
                        data=pair,
                        fold=fold,
                        model=v.model or exp.model,
                        model_kwargs={**exp.model_overrides, **v.model_overrides},
                        train=train,
                    )
                )
    return runs

"""Component ``train``: one run of one experiment, exactly as ``dvc repro`` trains it.

It runs ``tcnet train --experiment E --run R --nproc GPUS`` (the ``tcnet`` CLI that the DVC stage
calls): with one GPU that is ``tcnet.stages.train.run`` in this process; with more, the stage's own
``--nproc`` relaunches it under torchrun (DDP over the pod's GPUs). With ``checkpoint_dir`` (a volume mounted by
the pipeline's ``--checkpoint-pvc``) the run trains in ``<checkpoint_dir>/<pipeline run>/`` and a
retried task of the same pipeline run resumes from its last epoch (``tcnet train --checkpoint-dir``).

Data: ``preprocessed`` and ``splits`` are the training dataset's (a pod downloads its input artifacts
whole: one dataset's arrays, not every dataset's); ``eval_splits`` is the evaluated dataset's split,
which the stage checks before it trains (an empty evaluation part fails before the first epoch).
"""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train(params_yaml: str, experiment: str, run_id: str, preprocessed: Input[Dataset], splits: Input[Dataset],
          eval_splits: Input[Dataset], model: Output[Model], gpus: int = 1, pipeline_run_id: str = "",
          checkpoint_dir: str = ""):
    """``<model>/<experiment>/<run_id>/``: best.pt, last.pt, history.csv, run.json."""
    import os, tempfile
    from pathlib import Path
    from tcnet.cli import main
    from tcnet.utils.trees import merge_trees

    if checkpoint_dir and not pipeline_run_id:  # the volume's folders are per pipeline run: never share one
        raise ValueError("checkpoint_dir needs pipeline_run_id (dsl.PIPELINE_JOB_ID_PLACEHOLDER)")
    os.environ["TCNET_PIPELINE_RUN_ID"] = pipeline_run_id  # this pipeline run's MLflow parent run
    os.environ["TCNET_DATA_HASH"] = preprocessed.metadata.get("data_md5", "")  # no checkout here: fetch_data's read
    (params := Path(tempfile.mkdtemp()) / "params.yaml").write_text(params_yaml)
    split_dir = merge_trees(tempfile.mkdtemp(), splits.path, eval_splits.path, pattern="*.json")  # preflight checks both
    status = main(["train", "--params", str(params), "--experiment", experiment, "--run", run_id, "--nproc", str(gpus),
                   "--preprocessed", preprocessed.path, "--splits", str(split_dir), "--out", model.path,
                   "--checkpoint-dir", checkpoint_dir and os.path.join(checkpoint_dir, pipeline_run_id)])
    if status:
        raise RuntimeError(f"tcnet train failed (exit status {status}); its error is in the log above")
    model.metadata.update({"experiment": experiment, "run_id": run_id, "framework": "pytorch"})

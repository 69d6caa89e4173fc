"""The tcnet Kubeflow pipeline (``python -m pipeline compile|run|submit``); see docs/deploy.md."""

from pipeline.pipeline import PipelineOptions, build_pipeline, compile_pipeline, local_run, run_items

__all__ = ["PipelineOptions", "build_pipeline", "compile_pipeline", "local_run", "run_items"]

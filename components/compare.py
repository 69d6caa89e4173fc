"""Component ``compare``: every evaluation of the pipeline run -> paper tables, statistics, report.

The evaluations arrive as a list (``dsl.Collected`` over the last runs loop), each
``<exp>/<run_id>/``, and, where the pipeline has more than one loop (one per pair of training and
evaluated dataset), ``prior``: the earlier loops' evaluations, merged by ``gather``. Merged into one
tree they are exactly what ``tcnet compare --eval`` reads. The report, the tables
and the headline numbers are copied to typed outputs so the KFP UI shows them.
"""

from typing import List, Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def compare(params_yaml: str, reported_yaml: str, evals: Input[List[Dataset]], reports: Output[Dataset],
            report: Output[HTML], tables: Output[Markdown], metrics: Output[Metrics], pipeline_run_id: str = "",
            prior: Optional[Input[Dataset]] = None):
    """``<reports>/``: per-experiment tables, stats and figures, report.html, metrics.json."""
    import json, os, shutil, tempfile
    from pathlib import Path
    import pandas as pd, yaml
    from tcnet.config import Params, from_dict
    from tcnet.stages.compare import run
    from tcnet.utils.trees import merge_evaluations

    os.environ["TCNET_PIPELINE_RUN_ID"] = pipeline_run_id  # this pipeline run's MLflow parent runs
    work = Path(tempfile.mkdtemp())
    merge_evaluations(work / "eval", getattr(prior, "path", None), *(e.path for e in evals))  # prior: None with one loop
    (work / "reported.yaml").write_text(reported_yaml)
    result = run(from_dict(Params, yaml.safe_load(params_yaml)).validate(), work / "eval", work / "reported.yaml", reports.path)
    shutil.copyfile(result["report"], report.path)
    md = [result["datasets"], *(e["table_md"] for e in result["experiments"].values())]
    Path(tables.path).write_text("\n\n".join(Path(m).read_text() for m in md))
    headline = pd.json_normalize(json.loads(Path(result["metrics"]).read_text()), sep=".").iloc[0]
    metrics.metadata.update({k: float(v) for k, v in headline.items() if isinstance(v, (int, float))})

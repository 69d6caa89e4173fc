"""The compare stage's parts: read evaluation outputs, the paper's numbers, tables, statistics,
figures, the HTML report and MLflow logging. ``tcnet.stages.compare`` wires them together.

- ``results.py``  evaluation outputs of one experiment -> per-run data (``load_experiment``)
- ``paper.py``    ``paper/reported.yaml`` -> the cells and stated differences of one experiment
- ``stats.py``    mean +- sd over folds, Wilcoxon signed-rank, seeded bootstrap CI
- ``tables.py``   the paper-form table (long CSV + Markdown/HTML display), the statistics table
- ``figures.py``  which figures an experiment gets (inferred from what varies) and drawing them
- ``html.py``     the one self-contained ``report.html``
- ``mlflow_log.py`` tables, figures and tags onto each experiment's MLflow parent run
"""

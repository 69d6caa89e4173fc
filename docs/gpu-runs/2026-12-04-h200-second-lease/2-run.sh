#!/bin/bash
# Session 23 device call 2: the CUDA tests of train.cuda_graph (loop, stage with resume), then the
# paper profile through the train stage's GraphedTrainStep, profiled; then with cudnn.benchmark on.
set -u
export PYTHONPATH=/tmp/site:$PWD
pip install --quiet --no-deps --target /tmp/site .whl/segmentation_models_pytorch-0.6.0-py3-none-any.whl >/dev/null 2>&1
run() { local name=$1 t=$2; shift 2; echo "== $name"; local s=$(date +%s); timeout $t "$@" > $OUT/$name.txt 2>&1; echo "rc=$? in $(( $(date +%s) - s )) s"; tail -c ${TAIL:-3500} $OUT/$name.txt; }
TAIL=2500 run pytest_cuda 150 python -m pytest -q -m cuda -p no:cacheprovider tests/training tests/stages/test_train.py tests/models/test_lk_tune.py tests/models/test_tcnet.py
TAIL=5000 run graph 150 python -m benchmarks gpu_step --cuda-graph --profile --lk-impl auto fft --json $OUT/graph.json
TAIL=1500 run graph_cudnn 120 python -m benchmarks gpu_step --cuda-graph --benchmark-cudnn --reference none --json $OUT/graph_cudnn.json
ls $OUT

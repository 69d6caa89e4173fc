#!/bin/bash
# Session 23 device call 1: CUDA tests of the capture path, the paper profile's kernel profile,
# the CUDA-graph step, then torch.compile (each cut by its own timeout so that all outputs return).
# (The graph rows of this call came from gpu_step's own capture code, replaced before call 2 by
# the train stage's GraphedTrainStep, tcnet/training/cuda_graph.py.)
set -u
export PYTHONPATH=/tmp/site:$PWD
pip install --quiet --no-deps --target /tmp/site .whl/segmentation_models_pytorch-0.6.0-py3-none-any.whl >/dev/null 2>&1
nvidia-smi -L; python -c "import torch,sys;print(torch.__version__, torch.version.cuda, sys.version.split()[0])"
run() { local name=$1 t=$2; shift 2; echo "== $name"; local s=$(date +%s); timeout $t "$@" > $OUT/$name.txt 2>&1; echo "rc=$? in $(( $(date +%s) - s )) s"; tail -c 6000 $OUT/$name.txt; }
run pytest_cuda 90 python -m pytest -q -m cuda tests/models/test_lk_tune.py tests/models/test_lk_conv.py -p no:cacheprovider
run profile 150 python -m benchmarks gpu_step --profile --json $OUT/profile.json
run graph 150 python -m benchmarks gpu_step --cuda-graph --lk-impl auto fft --json $OUT/graph.json
run compile ${COMPILE_S:-240} python -m benchmarks gpu_step --compile --reference none --steps 10 --json $OUT/compile.json
ls $OUT

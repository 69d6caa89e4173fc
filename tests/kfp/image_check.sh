#!/bin/sh
# Run inside the project image (`make image-check`), this checkout mounted read-only at /src: the
# tiny two-experiment pipeline under the KFP local runner and `dvc repro`, as the image's own user.
# The components and the `tcnet` command must import the image's installed tcnet, not /src's copy.
set -eu
cd /src
git config --global --add safe.directory /src  # /src belongs to another uid
pip install --user -q -c requirements.lock pytest pytest-timeout  # the image carries no test tools
export PYTHONSAFEPATH=1  # `python -m ...` (each KFP task) does not put the working folder on sys.path
python - <<'PY'
import tcnet
assert not tcnet.__file__.startswith("/src/"), f"tcnet imported from the checkout: {tcnet.__file__}"
print(f"tcnet {tcnet.__version__} from {tcnet.__file__}")
PY
log=$(mktemp)
python -m pytest -p no:cacheprovider -q -rs tests/kfp/test_kfp_local_run.py | tee "$log"
summary=$(tail -n 1 "$log")  # e.g. "1 passed, 17 warnings in 66.68s": a skip or a failure fails the check
case "$summary" in
  *failed* | *skipped* | *error*) exit 1 ;;
  *passed*) ;;
  *) exit 1 ;;
esac

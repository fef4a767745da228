#!/usr/bin/env bash
# The whole fault-injection suite: every SIGKILL / disk-error / signal test of tests/test_faults.py and the
# kill + Ctrl-C resume test of tests/test_resume.py, slow ones included, with the table of faults printed
# at the end (fault | where | outcome | time to recover). Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
exec python -m pytest tests/test_faults.py tests/test_resume.py -m "slow or not slow" -s -p no:cacheprovider "$@"

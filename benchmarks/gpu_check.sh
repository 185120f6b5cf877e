#!/usr/bin/env bash
# Everything this project checks on an NVIDIA GPU, in one pass, for a session that is lent one
# (see the README's "GPU checks"). It installs nothing: it uses the machine's python3 with a CUDA
# build of torch (and transformers, tabulate, pytest, safetensors where installed) and this
# checkout's src/. Each step has its own time limit and log; a failing step does not stop the rest.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]          # LOG_DIR: default $OUT, else ./gpu_logs
#
# Steps: the GPU tests (pytest -m gpu: CUDA training, 2:4 export, the FSDP2 path on a 1-rank NCCL
# mesh, no host sync in the hooks), the per-step hooks on Llama-1B-shaped layers against AdamW
# (overhead.py --preset gpu), and the decoder's 2:4 export timed against dense (inference.py).
set -u
logs=${1:-${OUT:-gpu_logs}}
mkdir -p "$logs"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
status=0
step() {  # step NAME LIMIT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$logs/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$logs/$name.log"
    echo "== $name: exit $rc"
    [ "$rc" -eq 0 ] || status=1
}
step env 60 "$py" -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
step gpu_tests 240 "$py" -m pytest -q -m gpu -p no:cacheprovider tests
step hooks_vs_adamw 150 "$py" benchmarks/overhead.py --preset gpu
step decoder_2of4 200 "$py" benchmarks/inference.py --decoder --device cuda
exit $status

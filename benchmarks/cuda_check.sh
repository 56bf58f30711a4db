#!/usr/bin/env bash
# On a machine with a CUDA GPU, in one go: the CUDA tests, the task tests (their training runs on the
# GPU there, TrainConfig.device being "auto"), and the GPU speed table (rnnkit's backend="auto", i.e.
# cuDNN for torch.nn's cells, against torch.nn and our reference). Logs and tables go to OUTDIR.
#   bash benchmarks/cuda_check.sh OUTDIR
set -uo pipefail
out=${1:?usage: cuda_check.sh OUTDIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, numba; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn',
torch.backends.cudnn.version(), 'numba', numba.__version__)" | tee -a "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/cuda_tests.log"
timeout 260 python3 -m rnnkit.cli bench --device cuda --no-stream --repeat 5 \
    --json "$out/gpu_speed.json" --markdown "$out/gpu_speed.md" 2>&1 | tee "$out/gpu_bench.log"
timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_language_model.py tests/test_classifier.py \
    tests/test_babi.py tests/test_forecaster.py tests/test_train.py 2>&1 | tee "$out/task_tests.log"

#!/usr/bin/env bash
# The prepared GPU check (issue 7): on a machine with one CUDA GPU and no network, run the attribution engine and the
# naive reference on a random-weight model with LLaMA-2-7B dimensions in bf16, built on the GPU, at prompt lengths
# 64 and 256 (2 prompts each; the naive reference on 1 prompt at 256), and print seconds per prompt, the speed-up,
# the max relative difference and the engine's share of the GPU's measured bf16 matrix-multiply rate.
# Budget: under 5 minutes on one H100/H200-class GPU (~13.5 GB of weights). Record the output in
# benchmarks/RESULTS.md. Usage, from the repository root: bash benchmarks/gpu_check.sh [.venv/bin/python]
# It needs only torch (with CUDA) and transformers 5.x: knrecall is imported from this tree, and neither polars,
# pydantic nor the workflow tools are imported (checked with those imports blocked). On the project's lent GPU
# machine, whose image has both: run(command="bash benchmarks/gpu_check.sh python3", timeout_s=420).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${1:-.venv/bin/python}"
"$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU visible to torch')"
export HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
time timeout 300 "$PYTHON" benchmarks/attribution.py --device cuda --dtype bfloat16 --shape llama2-7b \
    --lengths 64 256 --prompts 2 --steps 20 --max-rows 256 --no-world

#!/usr/bin/env bash
# The figures issues 18, 19 and 21 ask for, in one run on a lent GPU machine (random weights, real architectures):
#   bash benchmarks/gpu_checks.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python benchmarks/txt2img_vs_diffusers.py --full --device cuda --runs 5              # SD 1.5, 512x512, 20 steps
python benchmarks/txt2img_vs_diffusers.py --full --device cuda --family sdxl --runs 3 # SDXL, 1024x1024, 20 steps
python benchmarks/checkpoint_switch.py --full --device cuda
python benchmarks/controlnet_cost.py --full --device cuda --size 512 --runs 3          # SD 1.5 + ControlNet 1.1 sizes

#!/usr/bin/env bash
# DINO pretraining on ImageNet-1K: ResNet-50, 200 epochs, 2 GPUs x batch 128 (DDP).
#
# solo-learn 1.0.5 had no ImageNet-1K file for DINO, so this is its ImageNet-100 recipe
# (bash_files/pretrain/imagenet-100/dino.sh) on the ImageNet-1K folder with ResNet-50; the paper's
# Appendix A: ImageNet-1K on two RTX A6000, batch 128 per GPU, 200 epochs.
#
# Usage: bash bash_files/pretrain/imagenet/dino.sh [extra flags]   (extra flags come last and win)
# Env: as the ImageNet-100 recipe (DATA_DIR, LOG_DIR, PYTHON, DRY_RUN, DALI).
set -euo pipefail

exec bash "$(dirname "$0")/../imagenet-100/dino.sh" \
    --dataset imagenet \
    --train_dir imagenet/train \
    --val_dir imagenet/val \
    --backbone resnet50 \
    "$@"

#!/usr/bin/env bash
# SimCLR pretraining on CIFAR-10 / CIFAR-100: ResNet-18, 200 epochs, batch 256 on one GPU.
#
# Source: the values of solo-learn's paper-era bash_files/pretrain/cifar/simclr.sh
# (tags 1.0.4 / 1.0.5; facts only, no code copied) and the paper's Appendix A: 200 epochs,
# CIFAR on one TITAN Xp with batch 256, cosine schedule with 10 warm-up epochs.
# SimCLR has no momentum encoder (--ema_parts none); Table 1's '+EMA' row adds one with
# --ema_parts all --base_tau_momentum BETA.
# Precision: solo-ema's default (16-mixed on GPU, as solo-learn's --precision 16; 32 on CPU).
#
# Usage: bash bash_files/pretrain/cifar/simclr.sh cifar10|cifar100 [extra flags]
#   Extra flags come last and win, e.g. --ema_parts projector or --base_tau_momentum 0.9995.
# Env: DATA_DIR (default ./datasets), LOG_DIR (default ./runs), PYTHON (default python),
#   DRY_RUN=1: print the resolved config as one JSON line (--dry_run) and train nothing.
set -euo pipefail

DATASET=${1:-}
case "$DATASET" in
cifar10 | cifar100) shift ;;
*)
    echo "usage: $0 cifar10|cifar100 [extra flags]" >&2
    exit 2
    ;;
esac
DRY_RUN_FLAG=""
if [[ "${DRY_RUN:-0}" == 1 ]]; then DRY_RUN_FLAG="--dry_run"; fi

"${PYTHON:-python}" -m solo_ema.pretrain \
    --method simclr \
    --ema_parts none \
    --dataset "$DATASET" \
    --data_dir "${DATA_DIR:-./datasets}" \
    --backbone resnet18 \
    --max_epochs 200 \
    --devices 1 \
    --batch_size 256 \
    --num_workers 4 \
    --optimizer lars \
    --grad_clip_lars \
    --eta_lars 0.02 \
    --exclude_bias_n_norm \
    --scheduler warmup_cosine \
    --warmup_epochs 10 \
    --lr 0.4 \
    --classifier_lr 0.1 \
    --weight_decay 1e-5 \
    --num_crops_per_aug 1 1 \
    --crop_size 32 \
    --brightness 0.8 \
    --contrast 0.8 \
    --saturation 0.8 \
    --hue 0.2 \
    --gaussian_prob 0.0 0.0 \
    --solarization_prob 0.0 0.0 \
    --color_jitter_prob 0.8 \
    --gray_scale_prob 0.2 \
    --horizontal_flip_prob 0.5 \
    --min_scale 0.08 \
    --proj_output_dim 256 \
    --proj_hidden_dim 2048 \
    --temperature 0.2 \
    --log_dir "${LOG_DIR:-./runs}" \
    --save_checkpoint \
    --auto_resume \
    $DRY_RUN_FLAG "$@"

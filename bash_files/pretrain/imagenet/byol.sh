#!/usr/bin/env bash
# BYOL pretraining on ImageNet-1K: ResNet-50, 200 epochs, 2 GPUs x batch 128 (DDP), 16 accumulated
# batches: an effective batch of 4096.
#
# Source: the values of solo-learn's paper-era bash_files/pretrain/imagenet/byol.sh
# (tags 1.0.4 / 1.0.5; facts only, no code copied) and the paper's Appendix A: 200 epochs,
# ImageNet-1K on two RTX A6000, batch 128 per GPU, cosine schedule with 10 warm-up epochs.
# beta = 0.99 (paper: 0.99 unless stated), cosine-increased to 1.0 as in solo-learn.
# Effective batch: 2 GPUs x 128 x 16 accumulated batches = 4096 images per optimizer step.
# --accumulate_grad_batches 16: solo-learn's file had lr 0.45, classifier lr 0.2 and the default
# warm-up start lr 3e-5 and min lr 0 with 16 accumulated batches, and solo-learn 1.0.5 multiplied
# all four by accumulate_grad_batches; solo-ema does not, so the products are written here:
# lr 7.2 = 0.45 x 16, classifier lr 3.2 = 0.2 x 16, warm-up start lr 4.8e-4 = 3e-5 x 16, min lr 0 = 0 x 16.
# --dali: solo-learn's files used DALI loaders; DALI=0 drops the flag (torchvision loaders).
# Precision: solo-ema's default (16-mixed on GPU, as solo-learn's --precision 16; 32 on CPU).
#
# Usage: bash bash_files/pretrain/imagenet/byol.sh [extra flags]
#   Extra flags come last and win, e.g. --ema_parts projector or --base_tau_momentum 0.9995.
# Env: DATA_DIR (default ./datasets), LOG_DIR (default ./runs), PYTHON (default python),
#   DRY_RUN=1: print the resolved config as one JSON line (--dry_run) and train nothing.
set -euo pipefail

DRY_RUN_FLAG=""
if [[ "${DRY_RUN:-0}" == 1 ]]; then DRY_RUN_FLAG="--dry_run"; fi
DALI_FLAG="--dali"
if [[ "${DALI:-1}" == 0 ]]; then DALI_FLAG=""; fi

"${PYTHON:-python}" -m solo_ema.pretrain \
    --method byol \
    --ema_parts all \
    --dataset imagenet \
    --data_dir "${DATA_DIR:-./datasets}" \
    --train_dir imagenet/train \
    --val_dir imagenet/val \
    --backbone resnet50 \
    --max_epochs 200 \
    --devices 2 \
    --strategy ddp \
    --sync_batchnorm \
    --accumulate_grad_batches 16 \
    --batch_size 128 \
    --num_workers 4 \
    --optimizer lars \
    --eta_lars 0.001 \
    --exclude_bias_n_norm \
    --scheduler warmup_cosine \
    --warmup_epochs 10 \
    --warmup_start_lr 4.8e-4 \
    --min_lr 0 \
    --lr 7.2 \
    --classifier_lr 3.2 \
    --weight_decay 1e-6 \
    --num_crops_per_aug 1 1 \
    --crop_size 224 \
    --brightness 0.4 \
    --contrast 0.4 \
    --saturation 0.2 \
    --hue 0.1 \
    --gaussian_prob 1.0 0.1 \
    --solarization_prob 0.0 0.2 \
    --color_jitter_prob 0.8 \
    --gray_scale_prob 0.2 \
    --horizontal_flip_prob 0.5 \
    --min_scale 0.08 \
    --proj_output_dim 256 \
    --proj_hidden_dim 4096 \
    --pred_hidden_dim 4096 \
    --base_tau_momentum 0.99 \
    --final_tau_momentum 1.0 \
    --momentum_classifier \
    --log_dir "${LOG_DIR:-./runs}" \
    --save_checkpoint \
    --auto_resume \
    $DALI_FLAG $DRY_RUN_FLAG "$@"

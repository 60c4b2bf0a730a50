#!/usr/bin/env bash
# ReSSL pretraining on ImageNet-100: ResNet-18, 200 epochs, 2 GPUs x batch 128 (DDP).
#
# Source: the values of solo-learn's paper-era bash_files/pretrain/imagenet-100/ressl.sh
# (tags 1.0.4 / 1.0.5; facts only, no code copied) and the paper's Appendix A: 200 epochs,
# ImageNet-100 on two TITAN Xp, batch 128 per GPU, cosine schedule with 10 warm-up epochs.
# beta = 0.99 (paper: 0.99 unless stated), cosine-increased to 1.0 as in solo-learn.
# Two pipelines: crop 0 strong (colour jitter, grey), crop 1 weak (jitter strengths 0; grey 0.2 as
# solo-learn's default applied to both).
# No --sync_batchnorm: solo-learn's ImageNet-100 ReSSL file did not set it.
# --dali: solo-learn's files used DALI loaders; DALI=0 drops the flag (torchvision loaders).
# Precision: solo-ema's default (16-mixed on GPU, as solo-learn's --precision 16; 32 on CPU).
#
# Usage: bash bash_files/pretrain/imagenet-100/ressl.sh [extra flags]
#   Extra flags come last and win, e.g. --ema_parts projector or --base_tau_momentum 0.9995.
# Env: DATA_DIR (default ./datasets), LOG_DIR (default ./runs), PYTHON (default python),
#   DRY_RUN=1: print the resolved config as one JSON line (--dry_run) and train nothing.
set -euo pipefail

DRY_RUN_FLAG=""
if [[ "${DRY_RUN:-0}" == 1 ]]; then DRY_RUN_FLAG="--dry_run"; fi
DALI_FLAG="--dali"
if [[ "${DALI:-1}" == 0 ]]; then DALI_FLAG=""; fi

"${PYTHON:-python}" -m solo_ema.pretrain \
    --method ressl \
    --ema_parts all \
    --dataset imagenet100 \
    --data_dir "${DATA_DIR:-./datasets}" \
    --train_dir imagenet-100/train \
    --val_dir imagenet-100/val \
    --backbone resnet18 \
    --max_epochs 200 \
    --devices 2 \
    --strategy ddp \
    --batch_size 128 \
    --num_workers 4 \
    --optimizer sgd \
    --scheduler warmup_cosine \
    --warmup_epochs 10 \
    --lr 0.3 \
    --classifier_lr 0.1 \
    --weight_decay 1e-4 \
    --num_crops_per_aug 1 1 \
    --crop_size 224 \
    --brightness 0.4 0.0 \
    --contrast 0.4 0.0 \
    --saturation 0.4 0.0 \
    --hue 0.1 0.0 \
    --gaussian_prob 0.5 0.0 \
    --solarization_prob 0.0 0.0 \
    --color_jitter_prob 0.8 \
    --gray_scale_prob 0.2 \
    --horizontal_flip_prob 0.5 \
    --min_scale 0.08 \
    --proj_output_dim 256 \
    --proj_hidden_dim 4096 \
    --queue_size 65536 \
    --temperature_q 0.1 \
    --temperature_k 0.04 \
    --base_tau_momentum 0.99 \
    --final_tau_momentum 1.0 \
    --momentum_classifier \
    --log_dir "${LOG_DIR:-./runs}" \
    --save_checkpoint \
    --auto_resume \
    $DALI_FLAG $DRY_RUN_FLAG "$@"

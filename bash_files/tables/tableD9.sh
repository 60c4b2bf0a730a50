#!/usr/bin/env bash
# Table D.9 of the paper (Appendix D): BYOL on CIFAR-10 (ResNet-18, 200 epochs) with and without momentum,
# and projector-only EMA (beta 0.99) with BN1 (--bn_backbone_out) and/or BN2 (--bn_projector_out). 6 runs.
# BN1 has two readings (see tableC8.sh). Default (--bn1_position projector): a BatchNorm1d on the pooled backbone
# feature in the projector path only. The other, BN1 on the backbone output that the classifier sees too:
#   ROWS="projector-bn1 projector-bn1-bn2" LOG_DIR=runs-bn1-backbone \
#       bash bash_files/tables/tableD9.sh --bn1_position backbone
#
# Usage: bash bash_files/tables/tableD9.sh [extra flags for every run]
#   ROWS="projector projector-bn1-bn2" ...   run only these rows;  DRY_RUN=1 ...  print the configs only
# Compare with the paper: solo-ema-report --table D9
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

PROJ=(--ema_parts projector --base_tau_momentum 0.99)

run_row D9 byol cifar/byol.sh cifar10 --ema_parts all --base_tau_momentum 0.99
run_row D9 no-ema cifar/byol.sh cifar10 "${NO_EMA[@]}"
run_row D9 projector cifar/byol.sh cifar10 "${PROJ[@]}"
run_row D9 projector-bn1 cifar/byol.sh cifar10 "${PROJ[@]}" --bn_backbone_out
run_row D9 projector-bn2 cifar/byol.sh cifar10 "${PROJ[@]}" --bn_projector_out
run_row D9 projector-bn1-bn2 cifar/byol.sh cifar10 "${PROJ[@]}" --bn_backbone_out --bn_projector_out

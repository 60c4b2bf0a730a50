#!/usr/bin/env bash
# Table C.8 of the paper (Appendix C): BYOL on CIFAR-100 (ResNet-18, 200 epochs) with and without momentum,
# and projector-only EMA (beta 0.99) with BN1 (BatchNorm on the output of block 4: --bn_backbone_out) and/or
# BN2 (BatchNorm on the output of the projector: --bn_projector_out). Top-1 and KNN-1 (--knn_eval). 7 runs.
#
# Usage: bash bash_files/tables/tableC8.sh [extra flags for every run]
#   ROWS="projector-bn1-bn2" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table C8
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

PROJ=(--ema_parts projector --base_tau_momentum 0.99)

run_row C8 byol cifar/byol.sh cifar100 --knn_eval --ema_parts all --base_tau_momentum 0.99
run_row C8 no-ema cifar/byol.sh cifar100 --knn_eval "${NO_EMA[@]}"
run_row C8 no-ema-bn1-bn2 cifar/byol.sh cifar100 --knn_eval "${NO_EMA[@]}" --bn_backbone_out --bn_projector_out
run_row C8 projector cifar/byol.sh cifar100 --knn_eval "${PROJ[@]}"
run_row C8 projector-bn1 cifar/byol.sh cifar100 --knn_eval "${PROJ[@]}" --bn_backbone_out
run_row C8 projector-bn2 cifar/byol.sh cifar100 --knn_eval "${PROJ[@]}" --bn_projector_out
run_row C8 projector-bn1-bn2 cifar/byol.sh cifar100 --knn_eval "${PROJ[@]}" --bn_backbone_out --bn_projector_out

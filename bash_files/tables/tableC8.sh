#!/usr/bin/env bash
# Table C.8 of the paper (Appendix C): BYOL on CIFAR-100 (ResNet-18, 200 epochs) with and without momentum,
# and projector-only EMA (beta 0.99) with BN1 (BatchNorm on the output of block 4: --bn_backbone_out) and/or
# BN2 (BatchNorm on the output of the projector: --bn_projector_out). Top-1 and KNN-1. 7 runs.
# KNN-1: --knn_metric paper, the kNN of solo-learn 1.0.x that the paper used (k = 20, euclidean on the raw
# backbone features, weights 1/(d + 1e-5), both large crops of the epoch in the bank); append
# --knn_metric cosine for solo-ema's own cosine kNN.
# BN1 has two readings. Default (--bn1_position projector): a BatchNorm1d on the pooled backbone feature in the
# projector path only; the online classifier and the kNN see the feature before it. The other reading, BN1 as
# part of the backbone output that everything downstream sees (classifier and kNN included):
#   ROWS="no-ema-bn1-bn2 projector-bn1 projector-bn1-bn2" LOG_DIR=runs-bn1-backbone \
#       bash bash_files/tables/tableC8.sh --bn1_position backbone
# (only the BN1 rows: --bn1_position needs --bn_backbone_out; another LOG_DIR keeps the default reading's runs).
#
# Usage: bash bash_files/tables/tableC8.sh [extra flags for every run]
#   ROWS="projector-bn1-bn2" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table C8
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

PROJ=(--ema_parts projector --base_tau_momentum 0.99)

run_row C8 byol cifar/byol.sh cifar100 --knn_metric paper --ema_parts all --base_tau_momentum 0.99
run_row C8 no-ema cifar/byol.sh cifar100 --knn_metric paper "${NO_EMA[@]}"
run_row C8 no-ema-bn1-bn2 cifar/byol.sh cifar100 --knn_metric paper "${NO_EMA[@]}" --bn_backbone_out --bn_projector_out
run_row C8 projector cifar/byol.sh cifar100 --knn_metric paper "${PROJ[@]}"
run_row C8 projector-bn1 cifar/byol.sh cifar100 --knn_metric paper "${PROJ[@]}" --bn_backbone_out
run_row C8 projector-bn2 cifar/byol.sh cifar100 --knn_metric paper "${PROJ[@]}" --bn_projector_out
run_row C8 projector-bn1-bn2 cifar/byol.sh cifar100 --knn_metric paper "${PROJ[@]}" --bn_backbone_out --bn_projector_out

#!/usr/bin/env bash
# Table 7 of the paper: BYOL (EMA on the whole encoder, beta 0.99) against "Fixed g": the target projector
# frozen at its initial weights (--ema_parts projector --base_tau_momentum 1: beta = 1) with the backbone
# shared, each with learning rate 1.0 (solo-learn's BYOL value) and 4.0 (ResNet-18, CIFAR-100, 200 epochs).
# 4 runs.
#
# Usage: bash bash_files/tables/table7.sh [extra flags for every run]
#   ROWS="fixed-projector-lr4" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table 7
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

FIXED_G=(--ema_parts projector --base_tau_momentum 1 --final_tau_momentum 1)

run_row 7 byol-lr1 cifar/byol.sh cifar100 --ema_parts all --base_tau_momentum 0.99 --lr 1.0
run_row 7 byol-lr4 cifar/byol.sh cifar100 --ema_parts all --base_tau_momentum 0.99 --lr 4.0
run_row 7 fixed-projector-lr1 cifar/byol.sh cifar100 "${FIXED_G[@]}" --lr 1.0
run_row 7 fixed-projector-lr4 cifar/byol.sh cifar100 "${FIXED_G[@]}" --lr 4.0

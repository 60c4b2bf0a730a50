#!/usr/bin/env bash
# Table 1 of the paper: effect of EMA in six SSL frameworks (ResNet-18, CIFAR-100, 200 epochs).
# Momentum methods with beta = 0.99 ("Baseline") and without momentum, beta = 0 ("Remove"); SimSiam and
# SimCLR without momentum ("Baseline") and with an EMA target on the whole encoder ("Add", beta 0.99 and 0.9).
# 12 runs, one TITAN Xp each in the paper (batch 256; Appendix A states no time for CIFAR).
#
# Usage: bash bash_files/tables/table1.sh [extra flags for every run]
#   ROWS="byol-ema byol-no-ema" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table 1
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

run_row 1 byol-ema cifar/byol.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row 1 byol-no-ema cifar/byol.sh cifar100 "${NO_EMA[@]}"
run_row 1 simsiam cifar/simsiam.sh cifar100 "${NO_EMA[@]}"
run_row 1 simsiam-ema cifar/simsiam.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row 1 dino-ema cifar/dino.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row 1 dino-no-ema cifar/dino.sh cifar100 "${NO_EMA[@]}"
run_row 1 ressl-ema cifar/ressl.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row 1 ressl-no-ema cifar/ressl.sh cifar100 "${NO_EMA[@]}"
run_row 1 mocov2plus-ema cifar/mocov2plus.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row 1 mocov2plus-no-ema cifar/mocov2plus.sh cifar100 "${NO_EMA[@]}"
run_row 1 simclr cifar/simclr.sh cifar100 "${NO_EMA[@]}"
# beta 0.9 cosine-increased to 1 (solo-learn's momentum default final tau); the paper states only beta = 0.90.
run_row 1 simclr-ema cifar/simclr.sh cifar100 --ema_parts all --base_tau_momentum 0.9

#!/usr/bin/env bash
# Table 3 of the paper: EMA on the whole encoder (baseline), on the backbone only, or on the projector only,
# for BYOL, DINO, ReSSL and MoCo v2+ (ResNet-18, CIFAR-100, 200 epochs, beta 0.99; the other part shared).
# 12 runs, one TITAN Xp each in the paper (batch 256; Appendix A states no time for CIFAR).
#
# Usage: bash bash_files/tables/table3.sh [extra flags for every run]
#   ROWS="byol-projector dino-projector" ...   run only these rows;  DRY_RUN=1 ...  print the configs only
# Compare with the paper: solo-ema-report --table 3
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

for method in byol dino ressl mocov2plus; do
    for parts in all backbone projector; do
        run_row 3 "$method-$parts" "cifar/$method.sh" cifar100 --ema_parts "$parts" --base_tau_momentum 0.99
    done
done

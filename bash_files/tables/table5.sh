#!/usr/bin/env bash
# Table 5 of the paper: whole-encoder EMA against projector-only EMA with a ResNet-50 backbone on CIFAR-100
# (200 epochs, beta 0.99, same projectors as with ResNet-18) for BYOL, MoCo v2+, ReSSL and DINO. 8 runs.
#
# Usage: bash bash_files/tables/table5.sh [extra flags for every run]
#   ROWS="dino-all dino-projector" ...   run only these rows;  DRY_RUN=1 ...  print the configs only
# Compare with the paper: solo-ema-report --table 5
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

for method in byol mocov2plus ressl dino; do
    for parts in all projector; do
        run_row 5 "$method-$parts" "cifar/$method.sh" cifar100 --backbone resnet50 --ema_parts "$parts" \
            --base_tau_momentum 0.99
    done
done

#!/usr/bin/env bash
# Table 6 of the paper: whole-encoder EMA against projector-only EMA on ImageNet-100 (ResNet-18, 200 epochs,
# 2 GPUs x batch 128), with beta 0.99 and with beta 0.9995, for BYOL, DINO, ReSSL and MoCo v2+. 16 runs.
# Paper hardware and time: 2 TITAN Xp; Appendix A: 19 h 34 min for DINO's 200 epochs, so about 13 days for
# the table run after run.
#
# Usage: bash bash_files/tables/table6.sh [extra flags for every run]
#   ROWS="byol-all-0.9995 byol-projector-0.9995" ...   run only these rows;  DRY_RUN=1 ...  print the configs
# Compare with the paper: solo-ema-report --table 6
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

for method in byol dino ressl mocov2plus; do
    for parts in all projector; do
        run_row 6 "$method-$parts-0.99" "imagenet-100/$method.sh" --ema_parts "$parts" --base_tau_momentum 0.99
        run_row 6 "$method-$parts-0.9995" "imagenet-100/$method.sh" --ema_parts "$parts" "${SLOW_EMA[@]}"
    done
done

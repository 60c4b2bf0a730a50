#!/usr/bin/env bash
# Figure 6(b) of the paper: a slow EMA, beta 0.9995, on the whole encoder against the projector only, for
# BYOL, DINO, ReSSL and MoCo v2+ (ResNet-18, CIFAR-100, 200 epochs). 8 runs.
# Fig. 6(a) (beta 0.99) has the settings of Table 3's -all and -projector rows: bash bash_files/tables/table3.sh.
# The text gives the whole-encoder accuracies at 0.9995 and, for the projector rows, only the drop, without
# saying from which 0.99 run (zoo/README.md).
#
# Usage: bash bash_files/tables/fig6.sh [extra flags for every run]
#   ROWS="dino-all dino-projector" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table F6
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

for parts in all projector; do
    for method in byol dino ressl mocov2plus; do
        run_row F6 "$method-$parts" "cifar/$method.sh" cifar100 --ema_parts "$parts" "${SLOW_EMA[@]}"
    done
done

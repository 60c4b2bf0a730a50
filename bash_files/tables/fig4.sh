#!/usr/bin/env bash
# Figure 4 of the paper: BYOL with EMA (beta 0.99) on one part of the encoder at a time, every other part
# shared (a), and on combinations (b): Block4 + projector, and Conv1 + the four blocks (= the backbone).
# ResNet-18, CIFAR-100, 200 epochs. 10 runs. Only some bars have numbers in the text (zoo/README.md).
# The rows none, projector, all and conv1-blocks have the same settings as table1-byol-no-ema,
# table3-byol-projector, table3-byol-all and table3-byol-backbone; ROWS= can skip them.
#
# Usage: bash bash_files/tables/fig4.sh [extra flags for every run]
#   ROWS="conv1 block1 block2 block3 block4 block4-projector" ...   only these;  DRY_RUN=1 ...  print configs
# Compare with the paper: solo-ema-report --table F4
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

run_row F4 conv1 cifar/byol.sh cifar100 --ema_parts conv1 --base_tau_momentum 0.99
run_row F4 none cifar/byol.sh cifar100 "${NO_EMA[@]}"
for block in block1 block2 block3 block4; do
    run_row F4 "$block" cifar/byol.sh cifar100 --ema_parts "$block" --base_tau_momentum 0.99
done
run_row F4 projector cifar/byol.sh cifar100 --ema_parts projector --base_tau_momentum 0.99
run_row F4 all cifar/byol.sh cifar100 --ema_parts all --base_tau_momentum 0.99
run_row F4 block4-projector cifar/byol.sh cifar100 --ema_parts block4+projector --base_tau_momentum 0.99
run_row F4 conv1-blocks cifar/byol.sh cifar100 --ema_parts backbone --base_tau_momentum 0.99

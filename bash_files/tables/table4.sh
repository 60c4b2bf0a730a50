#!/usr/bin/env bash
# Table 4 of the paper: DINO on ImageNet-1K with ResNet-50, 200 epochs, EMA on the whole encoder against EMA on
# the projector only (beta 0.99). 2 runs on 2 GPUs x batch 128 each.
# Paper hardware and time: 2 RTX A6000; 56.5 min/epoch (whole encoder) and 38.5 min/epoch (projector), and
# Appendix A: 7 days 16 h 56 min for DINO's 200 epochs. Together about 13 days.
# The cost columns in the paper's units (# EMA layers = nominal depth + projector layers: 53 and 3; Params (MB)
# = millions of backbone parameters held: 47.0 and 23.5; # forwards: 2 and 1) are counted by solo-ema's
# --dry_run ("cost": ema_layers_paper, params_m_paper, backbone_forwards_per_view, beside solo-ema's own
# ema_layers and momentum_params) and logged as cost/* in each run's metrics.csv; time per epoch is epoch_time.
# The counts without training:  DRY_RUN=1 bash bash_files/tables/table4.sh | solo-ema-report --table 4 --dry_runs -
#
# Usage: bash bash_files/tables/table4.sh [extra flags for every run]
#   ROWS=dino-projector ...   run only this row;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table 4
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

run_row 4 dino-all imagenet/dino.sh --ema_parts all --base_tau_momentum 0.99
run_row 4 dino-projector imagenet/dino.sh --ema_parts projector --base_tau_momentum 0.99

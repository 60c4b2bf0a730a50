#!/usr/bin/env bash
# Table 2 of the paper: EMA on FC2 only, with the projector's hidden layer reduced to 2 units
# (FC1(512,2), BN, ReLU, FC2(2,256)) so that FC2's 256 filters are 2-D (BYOL, ResNet-18, CIFAR-100, 200 epochs).
# Top-1 of the online linear classifier and KNN-1 (--knn_metric paper: the kNN of solo-learn 1.0.x, which the
# paper used: k = 20, euclidean on the raw backbone features, weights 1/(d + 1e-5), both large crops of the epoch in
# the bank; --knn_metric cosine gives solo-ema's own cosine kNN instead).
# 4 runs; the three trained rows also record FC2's online and target weights every 10 steps
# (<run>/weights_projector.fc2.pt, the data of Fig. 2 and Appendix E); the run without momentum also logs the
# gradient magnitudes of Fig. 5 (grad_linf/<part> in its metrics.csv). Plots: solo-ema-plot (docs/analysis.md).
#
# "Fixed random encoder" (random-encoder): the paper trains no encoder for this row. Here it is a run with
# --lr 0: the backbone, projector and predictor keep their random initial weights for the 200 epochs (every
# non-classifier group has lr 0, which the warm-up cosine schedule keeps at 0), and only the online linear
# classifier (classifier_lr 0.1) and the kNN see the frozen features. Caveat: the backbone runs in train mode,
# so its BatchNorm running statistics still adapt to CIFAR-100; the weights do not.
#
# Usage: bash bash_files/tables/table2.sh [extra flags for every run]
#   ROWS="no-ema fc2-ema-0.9" ...   run only these rows;  DRY_RUN=1 ...  print the configs, train nothing
# Compare with the paper: solo-ema-report --table 2
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_rows.sh"
TABLE_EXTRA=("$@")

FC2=(--proj_hidden_dim 2 --knn_metric paper)
TRACK=(--track_weights projector.fc2 --track_weights_interval 10)

run_row 2 random-encoder cifar/byol.sh cifar100 "${FC2[@]}" "${NO_EMA[@]}" --lr 0
# Fig. 5 monitors this run (beta = 0): max |dLoss/d output| of conv1, block1..4 and the projector.
run_row 2 no-ema cifar/byol.sh cifar100 "${FC2[@]}" "${NO_EMA[@]}" "${TRACK[@]}" --grad_monitor \
    --grad_monitor_interval 10
run_row 2 fc2-ema-0.9 cifar/byol.sh cifar100 "${FC2[@]}" --ema_parts projector.fc2 --base_tau_momentum 0.9 "${TRACK[@]}"
run_row 2 fc2-ema-0.99 cifar/byol.sh cifar100 "${FC2[@]}" --ema_parts projector.fc2 --base_tau_momentum 0.99 \
    "${TRACK[@]}"

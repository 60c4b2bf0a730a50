#!/usr/bin/env bash
# Evidence of the paper's central claim on real data: BYOL on Fashion-MNIST with the CIFAR recipe
# (bash_files/pretrain/cifar/byol.sh: ResNet-18 with the CIFAR stem, 32x32 crops, LARS, batch 256), the
# classic teacher (EMA on everything), projector-only EMA and no EMA at all (beta 0), from the same seed
# for the same number of epochs. Every epoch logs the online linear top-1 and the kNN top-1 of the
# validation split, and the epoch time. The data sit on the GPU (--device_data) unless DEVICE_DATA=0.
#
# Writes $OUT/fashion_mnist_byol.csv (one row per run: commit, hardware, command, epochs, top-1, kNN,
# seconds per epoch, momentum parameters), $OUT/fashion_mnist_byol_curves.csv (per epoch) and
# $OUT/fashion_mnist_byol.png (accuracy curves), then prints `solo-ema-report --measured` of it.
#
# Usage: bash bash_files/evidence/fashion_mnist_byol.sh [extra flags for every run]
#   EPOCHS=100 bash bash_files/evidence/fashion_mnist_byol.sh
#   EPOCHS=1 OUT=/tmp/ev LOG_DIR=/tmp/ev_runs bash bash_files/evidence/fashion_mnist_byol.sh --train_subset 512 \
#       --val_subset 256 --batch_size 64 --accelerator cpu          # smoke run (not evidence)
# Env: EPOCHS (default 100), SEED (5), PLACEMENTS ("all projector none"), METHODS ("byol"; add "mocov2plus dino"
#   when the budget allows, each with its CIFAR recipe), WARMUP_EPOCHS (10, the recipe's), DEVICE_DATA (1),
#   DATA_DIR (/usr/share/datasets/fashion-mnist), LOG_DIR (./runs/evidence), OUT (./zoo/evidence),
#   PYTHON (python), DRY_RUN=1 (print the resolved configs only), COMMIT (the commit stored in the rows; default:
#   the checkout's, give it when running from a source export without git).
set -euo pipefail

# The kNN of every epoch: the paper-era metric (k = 20, euclidean on raw features, 1/(d + 1e-5) weights, both
# large crops banked); KNN_FLAGS="--knn_eval --knn_k 20" gives the engine's cosine kNN instead.
KNN_FLAGS=${KNN_FLAGS:-"--knn_metric paper --knn_k 20"}

EPOCHS=${EPOCHS:-100}
SEED=${SEED:-5}
PLACEMENTS=${PLACEMENTS:-"all projector none"}
METHODS=${METHODS:-byol}
WARMUP_EPOCHS=${WARMUP_EPOCHS:-10}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
LOG_DIR=${LOG_DIR:-./runs/evidence}
OUT=${OUT:-./zoo/evidence}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RECIPES=$(cd "$HERE/../pretrain/cifar" && pwd)

DATA_FLAGS=(--dataset fashion_mnist --data_dir "$DATA_DIR")
if [[ "${DEVICE_DATA:-1}" == 1 ]]; then DATA_FLAGS+=(--device_data); fi
# beta = 0 for "none" (as the tables' NO_EMA rows); the recipe's beta 0.99 -> 1.0 for the others
NO_EMA=(--ema_parts none --base_tau_momentum 0 --final_tau_momentum 0)

for method in $METHODS; do
    names=()
    for parts in $PLACEMENTS; do
        name="$method-fashion_mnist-$parts"
        names+=("$LOG_DIR/$name")
        if [[ "$parts" == none ]]; then part_flags=("${NO_EMA[@]}"); else part_flags=(--ema_parts "$parts"); fi
        # The CIFAR recipe is called for cifar10 and its dataset flags are overridden (later flags win).
        echo ">>> $name" >&2
        DATA_DIR="$DATA_DIR" LOG_DIR="$LOG_DIR" PYTHON="$PY" bash "$RECIPES/$method.sh" cifar10 \
            "${DATA_FLAGS[@]}" --max_epochs "$EPOCHS" --warmup_epochs "$WARMUP_EPOCHS" --seed "$SEED" \
            $KNN_FLAGS "${part_flags[@]}" --name "$name" "$@"
    done
    if [[ "${DRY_RUN:-0}" == 1 ]]; then continue; fi
    out="$OUT/fashion_mnist_$method.csv"
    commit_flag=()
    if [[ -n "${COMMIT:-}" ]]; then commit_flag=(--commit "$COMMIT"); fi
    "${PYTHON:-python}" -m solo_ema.analysis.evidence "${names[@]}" --out "$out" "${commit_flag[@]}" \
        --command "EPOCHS=$EPOCHS WARMUP_EPOCHS=$WARMUP_EPOCHS SEED=$SEED KNN_FLAGS='$KNN_FLAGS' bash bash_files/evidence/fashion_mnist_byol.sh $*"
    "${PYTHON:-python}" -m solo_ema.report --measured "$out"
done

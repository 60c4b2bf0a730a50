#!/usr/bin/env bash
# The offline linear-evaluation recipe shared by every bash_files/linear/<dataset>/<method>.sh: the
# recipe does not depend on the method. The backbone (and, unless given, the dataset) come from the
# checkpoint's stored config; it is frozen in eval mode. Recipe of solo-ema-linear: SGD lr 0.1,
# momentum 0.9, weight decay 0, cosine over 100 epochs, batch 512, random resized crop + flip for
# training, the evaluation transform for the test split. The paper reports the online linear classifier
# of pretraining (solo-learn's protocol, its Appendix A); this is the offline check.
#
# Usage: bash bash_files/linear/_linear.sh CHECKPOINT [extra flags]
#   Extra flags come last and win (e.g. --precompute_features, --max_epochs 10, --name NAME).
# Env: DATA_DIR (default ./datasets), LOG_DIR (default ./runs), PYTHON (default python).
set -euo pipefail

CKPT=${1:-}
if [[ -z "$CKPT" ]]; then
    echo "usage: $0 CHECKPOINT [extra flags]" >&2
    exit 2
fi
shift

"${PYTHON:-python}" -m solo_ema.linear \
    --pretrained_feature_extractor "$CKPT" \
    --data_dir "${DATA_DIR:-./datasets}" \
    --max_epochs 100 \
    --batch_size 512 \
    --lr 0.1 \
    --momentum 0.9 \
    --weight_decay 0 \
    --num_workers 4 \
    --log_dir "${LOG_DIR:-./runs}" \
    "$@"

#!/usr/bin/env bash
# Offline linear evaluation of a DINO backbone pretrained on ImageNet-100 (bash_files/pretrain/imagenet-100/dino.sh),
# with the shared recipe of bash_files/linear/_linear.sh (solo-ema-linear; solo-learn's protocol, the
# paper's Appendix A).
#
# Usage: bash bash_files/linear/imagenet-100/dino.sh runs/<run>/checkpoints/last.ckpt [extra flags]
set -euo pipefail

if [[ $# -eq 0 ]]; then exec bash "$(dirname "$0")/../_linear.sh"; fi
CKPT=$1
shift
exec bash "$(dirname "$0")/../_linear.sh" "$CKPT" --train_dir imagenet-100/train --val_dir imagenet-100/val "$@"

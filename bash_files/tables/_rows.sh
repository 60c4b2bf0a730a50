#!/usr/bin/env bash
# Helpers shared by the table scripts (sourced, not run): `run_row TABLE ROW SCRIPT [ARGS...]` runs one row
# of a paper table with the pretrain recipe bash_files/pretrain/SCRIPT, named after the table and the row as in
# zoo/paper_results.csv (table3-byol-projector, tableC8-no-ema, fig4-conv1, fig6-dino-all, ...).
#
# The row's flags come after the recipe's, then --name, then the table script's own extra arguments
# (TABLE_EXTRA), so extra arguments given to a table script win for every row.
# Env:
#   DRY_RUN=1   print, one line per row, the JSON that --dry_run prints, with "table" and "row" keys added
#               (solo-ema-report --tag); nothing is trained
#   ROWS="a b"  run only these row ids (default: every row of the table)
#   DATA_DIR, LOG_DIR, PYTHON, DALI: passed on to the pretrain recipes
set -euo pipefail

ROWS_SH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PRETRAIN_DIR=$(cd "$ROWS_SH_DIR/../pretrain" && pwd)
TABLE_EXTRA=()

# run_name TABLE ROW: the run name of a row (tableN-ROW, tableC8-ROW; figN-ROW for the csv's FN).
run_name() {
    case "$1" in
    F*) echo "fig${1#F}-$2" ;;
    *) echo "table$1-$2" ;;
    esac
}

# wanted ROW: true when ROWS is unset or empty, or names ROW.
wanted() {
    [[ -z "${ROWS:-}" ]] && return 0
    local r
    for r in $ROWS; do
        [[ "$r" == "$1" ]] && return 0
    done
    return 1
}

# run_row TABLE ROW SCRIPT [ARGS...]: pretrain one row (or print its resolved config under DRY_RUN=1).
run_row() {
    local table=$1 row=$2 script=$3
    shift 3
    wanted "$row" || return 0
    local name
    name=$(run_name "$table" "$row")
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        bash "$PRETRAIN_DIR/$script" "$@" --name "$name" ${TABLE_EXTRA[@]+"${TABLE_EXTRA[@]}"} |
            "${PYTHON:-python}" -m solo_ema.report --tag "$table" "$row"
    else
        echo ">>> $name: bash bash_files/pretrain/$script $*" >&2
        bash "$PRETRAIN_DIR/$script" "$@" --name "$name" ${TABLE_EXTRA[@]+"${TABLE_EXTRA[@]}"}
    fi
}

# beta = 0 ("w/o momentum", "Remove"): every part shared with the online network, tau 0 from start to end.
NO_EMA=(--ema_parts none --base_tau_momentum 0 --final_tau_momentum 0)
# beta = 0.9995 (Table 6, Fig. 6), cosine-increased to 1 (solo-learn asserts base <= final, so MoCo v2+'s
# final 0.999 cannot stay).
SLOW_EMA=(--base_tau_momentum 0.9995 --final_tau_momentum 1.0)

#!/usr/bin/env bash
# Side-by-side accuracy check on one GPU: the stock MONAI anchor and the ct_organs bundle, trained at the
# same time for MIN minutes each on fold 0 of 5 of the 34 fully contoured head-and-neck CTs, both
# predicting the same 7 held-out patients, scored by the anchor's independent scorer.
#
# Needs (git-ignored, carried to the machine): .whl/ (monai, nibabel, pytorch-ignite, edt, cc3d,
# fill-voids, fastremap, fire, termcolor for Python 3.12) and .gpudata/ (hn34 dataset + anchors).
#
#   bash benchmarks/gpu_suite.sh                    # on the GPU machine, writes into $OUT
#   MIN=0.3 DEVICE=cpu THREADS=1 SKIP_WHEELS=1 PY=.venv/bin/python OUT=/tmp/suite bash benchmarks/gpu_suite.sh
#
# Files in $OUT (8 at most come back): summary.txt (environment, exit codes, wall times, mean scores),
# stock.log, medunet.log (training, then prediction), score_stock.json, score_medunet.json, and the
# medunet run's plans.json, schedule.json, metrics.csv. Always exits 0; failures are in summary.txt.
set -euo pipefail
export PYTHONUNBUFFERED=1

MIN=${MIN:-5}                       # training minutes, each side
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-8}               # OMP_NUM_THREADS for each of the two concurrent trainings
PY=${PY:-python3}
WORK=${WORK:-/tmp/gx}
OUT=${OUT:-/tmp/gpu_suite_out}
SLACK_S=${SLACK_S:-140}             # beyond MIN for each training (set-up, caching, validation, stock's predictions)
PREDICT_TIMEOUT_S=${PREDICT_TIMEOUT_S:-120}
MEDUNET_ARGS=${MEDUNET_ARGS:-}      # extra bundle overrides, e.g. "--spatial_dims 3"
DATA=.gpudata/hn34
ANCHORS=.gpudata/anchors
NAMES=Brainstem,SpinalCord,RightParotid,LeftParotid,Esophagus,Larynx,Mandible

cd "$(dirname "$0")/.."
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
T0=$(date +%s)

# ---- environment -------------------------------------------------------------------------------
if [ "${SKIP_WHEELS:-0}" != 1 ]; then
    t=$(date +%s)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
    note "wheels installed in $(($(date +%s) - t)) s"
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{
    echo "== environment"
    { command -v nvidia-smi >/dev/null && nvidia-smi -L; } 2>&1 || echo "nvidia-smi: not available"
    "$PY" - <<'EOF' 2>&1 || echo "python environment check failed"
import platform, sys
import monai, nibabel, numpy, torch
print("python", platform.python_version(), sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("monai", monai.__version__, "nibabel", nibabel.__version__, "numpy", numpy.__version__)
EOF
    echo "MIN=$MIN DEVICE=$DEVICE THREADS=$THREADS SLACK_S=$SLACK_S MEDUNET_ARGS=$MEDUNET_ARGS"
    echo
} | tee -a "$SUMMARY"

# ---- fold view ---------------------------------------------------------------------------------
rm -rf "$WORK"
mkdir -p "$WORK"
if ! "$PY" -m benchmarks.real_accuracy prepare --heldout "$DATA" --train "$DATA" --fold 0 --folds 5 \
    --out "$WORK" --heldout-only >"$WORK/prepare.log" 2>&1; then
    note "prepare FAILED:"
    tail -n 20 "$WORK/prepare.log" | tee -a "$SUMMARY"
fi

# ---- the two trainings, at the same time -------------------------------------------------------
# run NAME TIMEOUT_S LOG CMD...: records the exit code and wall seconds in $WORK/NAME.rc / NAME.wall
run() {
    local name=$1 limit=$2 log=$3
    shift 3
    local t rc=0
    t=$(date +%s)
    echo "\$ $*" >>"$log"
    OMP_NUM_THREADS=$THREADS timeout --signal=TERM --kill-after=20 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    echo "$rc" >"$WORK/$name.rc"
    echo "$(($(date +%s) - t))" >"$WORK/$name.wall"
}
TRAIN_LIMIT=$(
    "$PY" -c "import sys; print(int(float(sys.argv[1]) * 60 + int(sys.argv[2])))" "$MIN" "$SLACK_S"
)
: >"$OUT/stock.log"
: >"$OUT/medunet.log"
run stock "$TRAIN_LIMIT" "$OUT/stock.log" \
    "$PY" "$ANCHORS/stock_monai_recipe.py" "$DATA" "$WORK/stock" --minutes "$MIN" --fold 0 --folds 5 \
    --device "$DEVICE" &
PID_STOCK=$!
# shellcheck disable=SC2086  # MEDUNET_ARGS is a list of overrides
run medunet_train "$TRAIN_LIMIT" "$OUT/medunet.log" \
    "$PY" -m monai.bundle run training --config_file bundles/ct_organs/train.json \
    --dataset_dir "$WORK/train_view_heldout_only" --output_dir "$WORK/runs/gpu3d" \
    --time_budget_min "$MIN" --device "$DEVICE" --mlflow_tracker#enabled False $MEDUNET_ARGS &
PID_MEDUNET=$!
wait "$PID_STOCK" || true
wait "$PID_MEDUNET" || true

# ---- medunet predicts the held-out images ------------------------------------------------------
CKPT=$WORK/runs/gpu3d/best.pt
[ -f "$CKPT" ] || CKPT=$WORK/runs/gpu3d/last.pt
if [ -f "$CKPT" ]; then
    echo -e "\n==== predict with $CKPT" >>"$OUT/medunet.log"
    run medunet_predict "$PREDICT_TIMEOUT_S" "$OUT/medunet.log" \
        "$PY" -c "import sys; from medunet.cli import main; sys.exit(main(sys.argv[1:]))" predict \
        --input "$WORK/heldout_images" --output "$WORK/pred_medunet" --checkpoint "$CKPT" --device "$DEVICE"
else
    echo "no checkpoint" >"$WORK/medunet_predict.rc"
    echo 0 >"$WORK/medunet_predict.wall"
fi

# ---- scores ------------------------------------------------------------------------------------
score() {  # score NAME PRED_DIR
    local name=$1 pred=$2 js=$OUT/score_$1.json
    if [ -z "$(find "$pred" -name 'segmentation.nii*' 2>/dev/null | head -n 1)" ]; then
        echo "{\"error\": \"no predictions in $pred\"}" >"$js"
        return
    fi
    if "$PY" "$ANCHORS/score_masks.py" "$pred" "$DATA/labelsTr" 8 --names "$NAMES" --only-predicted \
        >"$WORK/score_$name.out" 2>"$WORK/score_$name.err"; then
        tail -n 1 "$WORK/score_$name.out" >"$js"
    else
        echo "{\"error\": \"scorer failed\", \"stderr\": $("$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()[-2000:]))' <"$WORK/score_$name.err")}" >"$js"
    fi
}
score stock "$WORK/stock"
score medunet "$WORK/pred_medunet"

for f in plans.json schedule.json metrics.csv; do
    if [ -f "$WORK/runs/gpu3d/$f" ]; then cp "$WORK/runs/gpu3d/$f" "$OUT/$f"; fi
done
for log in "$OUT/stock.log" "$OUT/medunet.log"; do  # keep each under the 16 MB a returned file may have
    if [ "$(stat -c %s "$log")" -gt 8000000 ]; then
        tail -c 8000000 "$log" >"$log.tmp" && mv "$log.tmp" "$log"
    fi
done

# ---- summary -----------------------------------------------------------------------------------
{
    echo "== results (exit code 0 = ok, 124/137 = stopped by its time limit)"
    for s in stock medunet_train medunet_predict; do
        printf '%-16s rc=%-12s wall=%ss\n' "$s" "$(cat "$WORK/$s.rc" 2>/dev/null || echo missing)" \
            "$(cat "$WORK/$s.wall" 2>/dev/null || echo ?)"
    done
    echo "medunet checkpoint: $CKPT $([ -f "$CKPT" ] || echo '(missing)')"
    echo "stock: $(grep '"train_minutes"' "$OUT/stock.log" | tail -n 1 || true)"
    for s in stock medunet; do
        "$PY" - "$OUT/score_$s.json" "$s" <<'EOF' || echo "$s: unreadable score"
import json, sys
r = json.load(open(sys.argv[1]))
if "error" in r:
    print(f"{sys.argv[2]:8s} ERROR {r['error']}")
else:
    organs = " ".join(f"{k}={v['dice']}" for k, v in r.items() if isinstance(v, dict))
    print(f"{sys.argv[2]:8s} evaluated={r['evaluated']}/{r['cases']} mean_dice={r['mean_dice']} "
          f"mean_hd95={r['mean_hd95']} | {organs}")
EOF
    done
    echo "total wall: $(($(date +%s) - T0)) s"
} | tee -a "$SUMMARY"
for s in stock medunet_train medunet_predict; do
    rc=$(cat "$WORK/$s.rc" 2>/dev/null || echo missing)
    if [ "$rc" != 0 ]; then
        log=$OUT/stock.log
        [ "$s" = stock ] || log=$OUT/medunet.log
        echo "---- $s failed (rc=$rc); last lines of $(basename "$log"):"
        tail -n 25 "$log"
    fi
done
exit 0

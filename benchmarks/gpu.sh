#!/usr/bin/env bash
# The prepared GPU benchmark: every row in one short GPU window (< 8 minutes of wall time on one H100/H200).
#
#   bash benchmarks/gpu.sh [--dry-run] [OUT]     (OUT: the first argument, else $OUT, else runs/gpu_bench)
#   DRY_RUN=1 bash benchmarks/gpu.sh OUT         (the dry run: CPU, tiny model, 2 steps per row; CI)
#
# Writes OUT/gpu_bench.json and OUT/gpu_bench.md (one record / table line per row), OUT/gpu_bench.log (all
# output) and OUT/rows/*.json; when $OUT is set to another existing folder (the device machine's folder that
# comes back), the first three are copied there too. Rows run in one Python process (benchmarks/gpu_rows.py run), each under its
# own time budget; a row that fails is recorded with its one-line error and the next one runs. A process
# that dies or runs over the whole budget is killed, its row recorded failed, and the remaining rows run in
# a fresh process. No row starts after the budget; the table is written in any case.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
dry=()
out="${OUT:-runs/gpu_bench}"
for arg in "$@"; do
    case "$arg" in
        --dry-run) dry=(--dry-run) ;;
        -h|--help) sed -n '2,12p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "gpu.sh: unknown option $arg" >&2; exit 2 ;;
        *) out="$arg" ;;
    esac
done
if [[ "${DRY_RUN:-0}" != "0" && -n "${DRY_RUN:-}" ]]; then dry=(--dry-run); fi

if [[ -x "$root/.venv/bin/python" ]]; then python="${PYTHON:-$root/.venv/bin/python}"; else python="${PYTHON:-python}"; fi
export PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}"
# The GPU machine's image lacks some of facerep's dependencies (and torchao, for the fp8 row): when this
# Python cannot import them, they are installed from the wheels benchmarks/gpu_wheels.sh fetched into .whl/
wheels="${FACEREP_WHEELS:-$root/.whl}"
needed="import omegaconf, webdataset, lmdb, open_clip, torchao"
if ! "$python" -c "$needed" 2>/dev/null; then
    if compgen -G "$wheels/*.whl" >/dev/null; then
        site="$(mktemp -d)"
        "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
        export PYTHONPATH="$root/src:$site${PYTHONPATH#"$root/src"}"
        echo "[gpu.sh] installed $(ls "$wheels" | wc -l) wheels from $wheels into $site"
    elif ! "$python" -c "${needed%, torchao}" 2>/dev/null; then
        echo "gpu.sh: $python cannot import facerep's dependencies ($needed) and $wheels has no wheels:" \
            "run bash benchmarks/gpu_wheels.sh where pip reaches PyPI and carry .whl" >&2
        exit 2
    fi
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -rf "$out/rows"
mkdir -p "$out/rows"
log="$out/gpu_bench.log"
: >"$log"

rows() { "$python" "$here/gpu_rows.py" "$@" --out "$out" ${dry[@]+"${dry[@]}"}; }
budget=$(rows budget)           # the whole script, seconds (gpu_rows.py's TOTAL_BUDGET_S)
start=$(date +%s)
deadline=$((start + budget - 40))   # no row starts after this (margin: the last row's cap, collect)

echo "[gpu.sh] out=$out ${dry[*]:-} budget ${budget}s; rows:" | tee -a "$log"
rows list | tee -a "$log"

for attempt in 1 2 3 4 5 6 7 8 9 10; do
    left=$((deadline + 30 - $(date +%s)))
    if ((left < 5)); then break; fi
    rc=0
    timeout --kill-after=5 "$left" "$python" "$here/gpu_rows.py" run --out "$out" --deadline "$deadline" \
        ${dry[@]+"${dry[@]}"} 2>&1 | tee -a "$log" || rc=$?
    if ((rc == 0)); then break; fi
    if ((rc == 75)); then   # a row ran over its budget (recorded): the rest in a fresh process
        echo "[gpu.sh] fresh process for the remaining rows" | tee -a "$log"
        continue
    fi
    # the process died (crash, or killed at the budget): the row it had started is recorded failed
    failed=""
    for started in "$out"/rows/*.started; do
        [[ -e "$started" ]] || continue
        name="$(basename "$started" .started)"
        if [[ ! -e "$out/rows/$name.json" ]]; then failed="$name"; fi
    done
    if [[ -z "$failed" ]]; then echo "[gpu.sh] rows process exited $rc before any row" | tee -a "$log"; break; fi
    last="$(grep -v '^\s*$' "$log" | tail -n 1 | cut -c1-300)"
    why="process exited with status $rc"
    if ((rc == 124 || rc == 137)); then why="killed at the time budget (status $rc)"; fi
    echo "[gpu.sh] $failed: $why" | tee -a "$log"
    rows fail --row "$failed" --error "$why; last output: $last" | tee -a "$log"
done

total=$(($(date +%s) - start))
rows collect --total-s "$total" | tee -a "$log"
# on the device machine $OUT is the folder that comes back: the results are copied there too
if [[ -n "${OUT:-}" && -d "${OUT}" ]]; then
    envout="$(cd "$OUT" && pwd)"
    if [[ "$envout" != "$out" ]]; then
        cp "$out/gpu_bench.json" "$out/gpu_bench.md" "$out/gpu_bench.log" "$envout/"
        echo "[gpu.sh] copied gpu_bench.json, gpu_bench.md, gpu_bench.log to $envout" | tee -a "$log"
    fi
fi
echo "[gpu.sh] done in ${total}s (budget ${budget}s): $out/gpu_bench.json $out/gpu_bench.md" | tee -a "$log"

#!/usr/bin/env bash
# Issue 13's last acceptance point: with the new axes (prune.method, quantize, measure.runtimes) at their defaults,
# configs/smoke.yaml still plans and runs its 38 variants, and its wall time grows by <= 15 %, measured side by side.
#
#   . .venv/bin/activate
#   benchmarks/smoke_overhead.sh                        # 2 rounds of baseline/candidate, the whole smoke grid
#   ROUNDS=3 benchmarks/smoke_overhead.sh               # more rounds
#   KEEP=runs/overhead benchmarks/smoke_overhead.sh     # also keep both arms' last experiments there
#   ROUNDS=1 EXTRA_SET="kd.alpha=[0.9] prune.amount=[0.5] teacher.epochs=1 student.epochs=1" \
#       benchmarks/smoke_overhead.sh                    # a reduced grid, to check that the script works
#
# Baseline: commit $BASE (default 8762508, before the compression axes) checked out with `git worktree add` into a
# temp folder (removed at the end). Candidate: this working tree. Both run `python -m kdsweep run configs/smoke.yaml`
# from their own tree with the same Python (the active venv) and PYTHONPATH=<tree>, so each runs its own code,
# alternating baseline / candidate each round. Prints each wall time, the medians and candidate/baseline.
set -euo pipefail

ROUNDS=${ROUNDS:-2}
BASE=${BASE:-8762508}
EXTRA_SET=${EXTRA_SET:-}
KEEP=${KEEP:-}
PY=${PYTHON:-python}
LIMIT=1.15

cand=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kdsweep-overhead.XXXXXX")
cleanup() {
    git -C "$cand" worktree remove --force "$tmp/base" 2>/dev/null || true
    git -C "$cand" worktree prune
    rm -rf "$tmp"
}
trap cleanup EXIT
git -C "$cand" worktree add --detach --quiet "$tmp/base" "$BASE"

sets=()
for s in $EXTRA_SET; do sets+=(--set "$s"); done

# one sweep of `tree` into a fresh experiment; prints its wall time in seconds
run_arm() {
    local tree=$1 name=$2 log=$tmp/$2.log
    local where
    where=$(cd "$tree" && PYTHONPATH=$tree "$PY" -c 'import kdsweep; print(kdsweep.__file__)')
    if [[ $where != "$tree"/* ]]; then
        echo "error: $name imports kdsweep from $where, not from $tree" >&2
        exit 1
    fi
    local t0 t1
    t0=$(date +%s.%N)
    if ! (cd "$tree" && PYTHONPATH=$tree "$PY" -m kdsweep run configs/smoke.yaml --storage "$tmp/runs" \
            --name "$name" "${sets[@]}") >"$log" 2>&1; then
        echo "error: $name failed; last lines of its log:" >&2
        tail -20 "$log" >&2
        exit 1
    fi
    t1=$(date +%s.%N)
    # the plan's first line, e.g. "plan for 'smoke': 38 variants in 4 stages"
    grep -m1 -o "[0-9]* variants" "$log" | cut -d' ' -f1 >"$tmp/$name.variants"
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }'
}

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "baseline: $BASE ($(git -C "$tmp/base" log -1 --format=%s | cut -c1-80))"
dirty=$(git -C "$cand" diff --quiet HEAD || echo " + uncommitted changes")
echo "candidate: working tree of $cand at $(git -C "$cand" rev-parse --short HEAD)$dirty"
echo "extra --set: ${EXTRA_SET:-none}; rounds: $ROUNDS"
base_times=()
cand_times=()
for r in $(seq 1 "$ROUNDS"); do
    b=$(run_arm "$tmp/base" "baseline-r$r")
    c=$(run_arm "$cand" "candidate-r$r")
    base_times+=("$b")
    cand_times+=("$c")
    nb=$(cat "$tmp/baseline-r$r.variants")
    nc=$(cat "$tmp/candidate-r$r.variants")
    printf 'round %d: baseline %.1f s (%s variants), candidate %.1f s (%s variants)\n' "$r" "$b" "$nb" "$c" "$nc"
    if [[ $nb != "$nc" ]]; then
        echo "FAIL: the candidate plans $nc variants, the baseline $nb" >&2
        exit 1
    fi
done
if [[ -n $KEEP ]]; then
    mkdir -p "$KEEP"
    cp -r "$tmp/runs/baseline-r$ROUNDS" "$tmp/runs/candidate-r$ROUNDS" "$KEEP"/
    echo "kept: $KEEP/baseline-r$ROUNDS $KEEP/candidate-r$ROUNDS"
fi
"$PY" - "$LIMIT" "${base_times[*]}" "${cand_times[*]}" <<'EOF'
import statistics
import sys

limit = float(sys.argv[1])
base, cand = ([float(x) for x in arg.split()] for arg in sys.argv[2:4])
mb, mc = statistics.median(base), statistics.median(cand)
ratio = mc / mb
print(f"median: baseline {mb:.1f} s, candidate {mc:.1f} s, candidate/baseline {ratio:.3f} "
      f"({'PASS' if ratio <= limit else 'FAIL'}: <= {limit:g})")
EOF

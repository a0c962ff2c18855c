#!/usr/bin/env bash
# Before/after: bench/send_day.py on REF (a git worktree) and on this working tree, RUNS times
# each, alternating and swapping the order every round so a machine getting slower or faster
# favours neither; then the median of every figure and after/before.
#
#   bench/compare.sh HEAD                                   # 2 runs each, the bench's defaults
#   bench/compare.sh main 3 -- --provider twilio --texts 3000 --senders 10
#
# Both trees are measured by this tree's bench (send_day.py --root), so a flag the old bench
# lacks still works; each run imports, migrates and starts the workers of its own tree.
#
# REF may instead be --flag='ARGS': this tree without ARGS (before) and with them (after), e.g.
# what outbound events cost a day:
#
#   bench/compare.sh --flag=--events 3 -- --provider twilio --texts 20000 --beat
set -o errexit -o pipefail -o nounset

usage() {
    echo "usage: bench/compare.sh REF|--flag='ARGS' [RUNS] [-- send_day.py args]" >&2
    exit 2
}

[[ $# -ge 1 && $1 != -- ]] || usage
ref=$1
shift
runs=2
if [[ $# -gt 0 && $1 != -- ]]; then
    runs=$1
    shift
fi
[[ $runs =~ ^[1-9][0-9]*$ ]] || usage
if [[ $# -gt 0 ]]; then
    [[ $1 == -- ]] || usage
    shift
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$here/.venv/bin/python}
out=$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")
flags=()
if [[ $ref == --flag=* ]]; then
    read -r -a flags <<<"${ref#--flag=}"
    tree=$here
    echo "before: $here; after: the same with ${flags[*]}"
else
    tree=$out/ref
    cleanup() {
        git -C "$here" worktree remove --force "$tree" 2>/dev/null || true
    }
    trap cleanup EXIT
    git -C "$here" worktree add --quiet --detach "$tree" "$ref"
    echo "before: $ref ($(git -C "$tree" rev-parse --short HEAD)); after: $here (working tree)"
fi
echo "logs: $out"

# One run: the whole output in a log, its JSON line appended to SIDE.jsonl.
run() {
    local side=$1 root=$2 round=$3 log line status=0
    shift 3
    log=$out/$side-$round.log
    "$python" "$here/bench/send_day.py" --root "$root" --json "$@" >"$log" 2>&1 || status=$?
    # A run whose checks failed still measured; a run without figures did not.
    line=$(grep '^{' "$log" | tail -n 1 || true)
    if [[ -n $line ]]; then
        echo "$line" >>"$out/$side.jsonl"
        echo "round $round $side: exit $status"
    else
        echo "round $round $side: no figures (exit $status); see $log" >&2
    fi
}

for ((round = 1; round <= runs; round++)); do
    if ((round % 2)); then
        run before "$tree" "$round" "$@"
        run after "$here" "$round" "${flags[@]}" "$@"
    else
        run after "$here" "$round" "${flags[@]}" "$@"
        run before "$tree" "$round" "$@"
    fi
done

"$python" - "$out/before.jsonl" "$out/after.jsonl" <<'EOF'
import json
import statistics
import sys


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def show(median):
    return f"{median:12.4g}" if median is not None else f"{'-':>12}"


before, after = load(sys.argv[1]), load(sys.argv[2])
if not before or not after:
    sys.exit("no figures on one side: see the logs")
keys = sorted({k for run in before + after for k, v in run.items() if isinstance(v, int | float)})
print(f"{'figure':<26} {'before':>12} {'after':>12} {'after/before':>12}   ({len(before)} / {len(after)} runs)")
for key in keys:
    b = [float(r[key]) for r in before if key in r]
    a = [float(r[key]) for r in after if key in r]
    mb = statistics.median(b) if b else None
    ma = statistics.median(a) if a else None
    ratio = f"{ma / mb:12.3f}" if mb and ma is not None else f"{'-':>12}"
    print(f"{key:<26} {show(mb)} {show(ma)} {ratio}")
EOF

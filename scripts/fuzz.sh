#!/usr/bin/env bash
# A bounded libFuzzer campaign per fuzz target, on the target's seed corpus.
#
# usage: scripts/fuzz.sh [--seconds N] [TARGET...]
#
# Runs each TARGET (default: every target `cargo fuzz list` names) for N
# seconds (default 10) and prints one line per target on stdout:
#
#   fuzz TARGET execs=N execs_per_s=N crashes=N
#
# crashes counts the crash-*, leak-*, timeout-* and oom-* artifacts the run
# left in fuzz/artifacts/TARGET/. New inputs go to the scratch corpus
# out/fuzz-corpus/TARGET (listed first, so libFuzzer writes there); the
# seeds in fuzz/corpus/TARGET are only read. Exits non-zero when a target
# crashed, failed to build or failed to run; out/fuzz/failures names them
# and out/fuzz/TARGET.log holds each run's output. Targets are built with
# LeakSanitizer (FUZZ_SANITIZER=address for ASan, none for neither).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

usage() {
    sed -n '3,4p' "$0" | sed 's/^# //' >&2
}

secs=10 targets=()
while (($#)); do
    case $1 in
    --seconds) secs=${2:?--seconds needs a number}; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    -*) usage; die "unknown option $1" ;;
    *) targets+=("$1"); shift ;;
    esac
done
[[ $secs =~ ^[0-9]+$ ]] && ((secs > 0)) || die "--seconds needs a whole number of seconds > 0, not '$secs'"

ensure_fuzz
# LeakSanitizer only, not AddressSanitizer: the fuzzed crates have no
# unsafe code, so ASan's memory checks have nothing of ours to catch, yet
# they made every target 3 to 5 times slower; LSan still reports leaks (an
# Rc cycle, say). FUZZ_SANITIZER=address brings ASan back (for a suspected
# bug in a dependency's unsafe code).
san=${FUZZ_SANITIZER:-leak}
case $san in address | leak | memory | thread | none) ;; *) die "FUZZ_SANITIZER must be address, leak, memory, thread or none" ;; esac
FUZZ=(cargo +nightly fuzz)
known=$("${FUZZ[@]}" list --fuzz-dir fuzz) || die "cargo fuzz list failed"
[[ -n $known ]] || die "cargo fuzz list names no targets"
if ((${#targets[@]} == 0)); then
    mapfile -t targets <<<"$known"
else
    for t in "${targets[@]}"; do
        grep -qx -- "$t" <<<"$known" || die "unknown fuzz target $t (targets: $(echo $known))"
    done
fi

logs=$OUT/fuzz
mkdir -p "$logs"
rm -f "$logs/failures"
failures=()

# One field of libFuzzer's final statistics, or empty.
final_stat() { sed -n "s/^stat::$1: *\\([0-9]*\\).*/\\1/p" "$2" | tail -1; }

for t in "${targets[@]}"; do
    log=$logs/$t.log
    seeds=fuzz/corpus/$t scratch=$OUT/fuzz-corpus/$t artifacts=fuzz/artifacts/$t
    execs=0 rate=0 crashes=0
    if [[ ! -d $seeds ]] || [[ -z $(ls -A "$seeds") ]]; then
        printf 'error: fuzz target %s has no seed corpus in %s\n' "$t" "$seeds" >&2
        failures+=("$t: no seeds in $seeds")
        echo "fuzz $t execs=$execs execs_per_s=$rate crashes=$crashes"
        continue
    fi
    if ! "${FUZZ[@]}" build --fuzz-dir fuzz -s "$san" "$t" >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        printf 'error: fuzz target %s failed to build (see %s)\n' "$t" "$log" >&2
        failures+=("$t: build failed (see $log)")
        echo "fuzz $t execs=$execs execs_per_s=$rate crashes=$crashes"
        continue
    fi
    mkdir -p "$scratch" "$artifacts"
    marker=$logs/$t.start
    touch "$marker"
    rc=0
    # -timeout: an input running 10 s is a hang (a timeout-* artifact);
    # the outer timeout only guards against libFuzzer itself not stopping.
    timeout -k 10 $((secs + 300)) "${FUZZ[@]}" run --fuzz-dir fuzz -s "$san" "$t" "$scratch" "$seeds" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >>"$log" 2>&1 || rc=$?
    found=$(find "$artifacts" -maxdepth 1 -newer "$marker" \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | sort)
    crashes=$(grep -c . <<<"$found" || true)
    done_line=$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
    if [[ $done_line =~ ^Done\ ([0-9]+)\ runs\ in\ ([0-9]+)\ second ]]; then
        execs=${BASH_REMATCH[1]}
        rate=$((execs / (BASH_REMATCH[2] > 0 ? BASH_REMATCH[2] : 1)))
    else
        execs=$(final_stat number_of_executed_units "$log")
        rate=$(final_stat average_exec_per_sec "$log")
    fi
    execs=${execs:-0} rate=${rate:-0}
    echo "fuzz $t execs=$execs execs_per_s=$rate crashes=$crashes"
    if ((crashes > 0)); then
        printf 'error: fuzz target %s crashed: %s (see %s; replay: cargo +nightly fuzz run --fuzz-dir fuzz -s %s %s ARTIFACT)\n' \
            "$t" "$(echo $found)" "$log" "$san" "$t" >&2
        failures+=("$t crashed: $(echo $found)")
    elif ((rc != 0)); then
        tail -n 20 "$log" >&2
        printf 'error: fuzz target %s failed to run (exit %s, see %s)\n' "$t" "$rc" "$log" >&2
        failures+=("$t: run failed with exit $rc (see $log)")
    elif [[ -z $done_line ]]; then
        printf 'error: fuzz target %s ended without libFuzzer'"'"'s final "Done" line (see %s)\n' "$t" "$log" >&2
        failures+=("$t: no final statistics (see $log)")
    fi
done

if ((${#failures[@]})); then
    printf '%s\n' "${failures[@]}" >"$logs/failures"
    die "${#failures[@]} of ${#targets[@]} fuzz target(s) failed: $(IFS=';'; echo "${failures[*]}")"
fi
rm -f "$logs/failures"

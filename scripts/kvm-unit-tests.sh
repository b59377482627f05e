#!/usr/bin/env bash
# Runs kvm-unit-tests' single-CPU x86_64 tests (x86/unittests.cfg entries
# with smp unset or 1) three ways and tabulates the verdicts:
#   direct   - straight on QEMU TCG, as kvm-unit-tests' own runner does
#   qemu-tcg - as the one VM of BMonitor nested on QEMU TCG (AMD-V backend)
#   bochs    - as the one VM of BMonitor on Bochs (VT-x backend); a few short
#              tests only (Bochs is slow), see --bochs-tests
# A measurement, not part of scripts/test.sh. Results: docs/kvm-unit-tests.md.
#
#   scripts/kvm-unit-tests.sh [options]
#
# Options:
#   --engines LIST     comma-separated subset of direct,qemu-tcg,bochs (all)
#   --tests REGEX      only tests whose unittests.cfg name matches (all)
#   --bochs-tests LIST space-separated names for the Bochs column
#                      (default: "$KUT_BOCHS_DEFAULT" below)
#   --out DIR          logs and results (default out/kvm-unit-tests)
#   --no-env           boot the BMonitor VMs without the environ module
#                      (NR_CPUS/MEMSIZE); every test then waits for 65534 APs
#   --no-probe         skip the fw_cfg probe (dummy.flat without environ)
# Environment: KUT_SRC (a git repository holding kvm-unit-tests; default
# ${BM_CACHE:-$HOME/.cache/bmonitor}/kvm-unit-tests), KUT_COMMIT (default
# the commit docs/kvm-unit-tests.md was made with, else the source's HEAD),
# KUT_BUILD (build clone, default $BM_CACHE/kvm-unit-tests-build),
# KUT_DIRECT_TIMEOUT (30), KUT_BM_TIMEOUT (60), KUT_BOCHS_TIMEOUT (240).
#
# No network: the source comes from a local git repository (a mirror of
# https://gitlab.com/kvm-unit-tests/kvm-unit-tests). Without one the script
# says "kvm-unit-tests: source not available, skipped" and exits 0; with
# KUT_SRC naming a missing path it exits 2.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KUT_PINNED=1da1819e49fc4938985edca67df669099b4c87a7
KUT_BOCHS_DEFAULT="vmexit_cpuid setjmp hypercall msr64 idt_test eventinj la57"
CACHE=${BM_CACHE:-$HOME/.cache/bmonitor}
ENGINES=direct,qemu-tcg,bochs
ONLY=
BOCHS_TESTS=$KUT_BOCHS_DEFAULT
KOUT=$OUT/kvm-unit-tests
USE_ENV=1
PROBE=1
while (($#)); do
    case $1 in
    --engines) ENGINES=$2; shift 2 ;;
    --tests) ONLY=$2; shift 2 ;;
    --bochs-tests) BOCHS_TESTS=$2; shift 2 ;;
    --out) KOUT=$2; shift 2 ;;
    --no-env) USE_ENV=; shift ;;
    --no-probe) PROBE=; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
T_DIRECT=${KUT_DIRECT_TIMEOUT:-30}
T_BM=${KUT_BM_TIMEOUT:-60}
T_BOCHS=${KUT_BOCHS_TIMEOUT:-240}
has_engine() { [[ ,$ENGINES, == *,$1,* ]]; }

# ---------------------------------------------------------------- source
how_to_get() {
    cat >&2 <<EOF
kvm-unit-tests is not downloaded by this script. Put a git clone of
https://gitlab.com/kvm-unit-tests/kvm-unit-tests (or its GitHub mirror
kvm-unit-tests/kvm-unit-tests, or any local mirror of it) at
  $CACHE/kvm-unit-tests
or point KUT_SRC at one, e.g.
  git clone --mirror https://gitlab.com/kvm-unit-tests/kvm-unit-tests.git $CACHE/kvm-unit-tests
EOF
}
if [[ -n ${KUT_SRC:-} ]]; then
    if ! git -C "$KUT_SRC" rev-parse --git-dir >/dev/null 2>&1; then
        printf 'error: KUT_SRC=%s is not a git repository holding kvm-unit-tests\n' "$KUT_SRC" >&2
        how_to_get
        exit 2
    fi
else
    KUT_SRC=$CACHE/kvm-unit-tests
    if ! git -C "$KUT_SRC" rev-parse --git-dir >/dev/null 2>&1; then
        echo "kvm-unit-tests: source not available, skipped"
        how_to_get
        exit 0
    fi
fi
KUT_SRC=$(cd "$KUT_SRC" && pwd)

KUT=${KUT_BUILD:-$CACHE/kvm-unit-tests-build}
[[ -d $KUT/.git ]] || { say "cloning $KUT_SRC into $KUT"; git clone -q "$KUT_SRC" "$KUT"; }
want=${KUT_COMMIT:-}
if [[ -z $want ]]; then
    if git -C "$KUT_SRC" cat-file -e "$KUT_PINNED^{commit}" 2>/dev/null; then
        want=$KUT_PINNED
    else
        want=$(git -C "$KUT_SRC" rev-parse HEAD)
        say "pinned commit $KUT_PINNED not in $KUT_SRC: using its HEAD $want"
    fi
fi
if [[ $(git -C "$KUT" rev-parse HEAD) != $(git -C "$KUT_SRC" rev-parse "$want^{commit}" 2>/dev/null || echo none) ]]; then
    git -C "$KUT" fetch -q "$KUT_SRC" '+refs/heads/*:refs/remotes/src/*' || die "git fetch from $KUT_SRC failed"
    git -C "$KUT" checkout -q --detach "$want" || die "commit $want not found in $KUT_SRC"
    rm -f "$KUT/.bm-built"
fi
KUT_REV=$(git -C "$KUT" rev-parse HEAD)

# ---------------------------------------------------------------- build
if [[ ! -f $KUT/.bm-built || $(cat "$KUT/.bm-built") != "$KUT_REV" ]]; then
    ensure_cmds gcc make objcopy
    say "building kvm-unit-tests $KUT_REV (x86_64)"
    (cd "$KUT" && ./configure --arch=x86_64 >configure.log 2>&1 && make -j2 >make.log 2>&1) ||
        die "kvm-unit-tests build failed: see $KUT/configure.log and $KUT/make.log"
    echo "$KUT_REV" >"$KUT/.bm-built"
fi
if has_engine qemu-tcg || has_engine bochs; then
    build_all
fi
has_engine direct && ensure_cmds qemu-system-x86_64

# ---------------------------------------------------------------- tests
# One line per single-CPU x86_64 entry of unittests.cfg:
# name|file|arch|accel|groups|test_args|qemu_params|check|timeout
list_tests() {
    awk '
    function flush() {
        if (name != "" && (smp == "" || smp == "1") && arch != "i386")
            print name "|" file "|" arch "|" accel "|" groups "|" args "|" qp "|" check "|" tmo
    }
    function val(s) { sub(/^[a-z_]+[ \t]*=[ \t]*/, "", s); gsub(/^["\047]|["\047]$/, "", s); return s }
    /^\[/ { flush(); name = substr($0, 2, length($0) - 2); file = smp = arch = accel = groups = args = qp = check = tmo = ""; next }
    /^file[ \t]*=/ { file = val($0) }
    /^smp[ \t]*=/ { smp = val($0) }
    /^arch[ \t]*=/ { arch = val($0) }
    /^accel[ \t]*=/ { accel = val($0) }
    /^groups[ \t]*=/ { groups = val($0) }
    /^test_args[ \t]*=/ { args = val($0) }
    /^qemu_params[ \t]*=/ { qp = val($0) }
    /^check[ \t]*=/ { check = val($0) }
    /^timeout[ \t]*=/ { tmo = val($0) }
    END { flush() }' "$KUT/x86/unittests.cfg"
}

# verdict_code CODE: kvm-unit-tests' exit() code (report_summary: 0 all
# passed, 1 failures, 38 = 77>>1 everything skipped).
verdict_code() {
    case $1 in
    0) echo PASS ;;
    38) echo SKIP ;;
    *) echo "FAIL ($1)" ;;
    esac
}

# note_from OUTPUT_FILE: the SUMMARY line, the first FAIL line and the
# first unhandled exception (exit code 63 is kvm-unit-tests' abort()).
note_from() {
    local s f u out
    s=$(grep -a -m1 '^SUMMARY:' "$1" | sed 's/^SUMMARY: //' || true)
    f=$(grep -a -m1 '^FAIL' "$1" | cut -c1-110 || true)
    u=$(grep -a -m1 -i 'unhandled exception\|^Assertion\|^abort' "$1" | cut -c1-90 || true)
    out=$s
    [[ -n $f ]] && out="${out:-no summary}; first: $f"
    [[ -n $u ]] && out="${out:+$out; }$u"
    printf '%s' "$out"
}

# check_ok "PATH=VALUE ...": the host preconditions the runner checks.
check_ok() {
    local c p v
    for c in $1; do
        p=${c%%=*} v=${c#*=}
        [[ -r $p && $(cat "$p") == "$v" ]] || { echo "$p"; return 1; }
    done
    return 0
}

# run_direct NAME FILE ARGS QEMU_PARAMS -> "VERDICT|NOTE"
run_direct() {
    local name=$1 file=$2 args=$3 qp=$4 log=$KOUT/direct/$1.log rc=0
    # TCG cannot do -enable-kvm or -cpu host: the runner's TCG equivalent.
    qp=${qp//-enable-kvm/}
    qp=${qp//-cpu host/-cpu max}
    local mem=(-m 256)
    [[ " $qp " == *" -m "* ]] && mem=()
    # shellcheck disable=SC2086 # qemu_params is a word list
    timeout -k 1 "$T_DIRECT" qemu-system-x86_64 -nodefaults -no-reboot -accel tcg -smp 1 "${mem[@]}" \
        -device pc-testdev -device isa-debug-exit,iobase=0xf4,iosize=0x4 -device pci-testdev \
        -display none -serial stdio -cpu qemu64,+x2apic $qp \
        -kernel "$KUT/x86/$file" -append "$args" </dev/null >"$log" 2>&1 || rc=$?
    sed -i 's/\r$//' "$log"
    local v
    if ((rc == 124 || rc == 137)); then
        v="TIMEOUT (${T_DIRECT}s)"
    elif ((rc & 1)); then
        v=$(verdict_code $((rc >> 1)))
    elif ((rc == 0)); then
        # -no-reboot turns a triple fault or reset into a clean exit.
        v="RESET (QEMU exit 0: triple fault or reset)"
    else
        v="ERROR (qemu exit $rc: $(grep -a -m1 -i 'error\|qemu-system' "$log" | cut -c1-80))"
    fi
    printf '%s|%s\n' "$v" "$(note_from "$log")"
}

# run_bm ENGINE NAME FILE ARGS TIMEOUT [noenv] -> "VERDICT|NOTE"
run_bm() {
    local engine=$1 name=$2 file=$3 args=$4 secs=$5 noenv=${6:-}
    local dir=$KOUT/$engine/$name
    mkdir -p "$dir"
    {
        echo '[[vm]]'
        echo 'name = "kut"'
        echo 'memory_mib = 256'
        echo "kernel = \"$KUT/x86/$file\""
        echo 'boot = "multiboot1"'
        # argv[0] is the first word, as with QEMU's "-kernel F -append A".
        echo "cmdline = \"$file${args:+ $args}\""
        if [[ -n $USE_ENV && -z $noenv ]]; then
            # kvm-unit-tests' environ (its runner passes it as -initrd):
            # stands in for the fw_cfg keys BMonitor does not emulate.
            printf 'NR_CPUS=1\nMEMSIZE=256\nMEMLIMIT=256\n' >"$dir/environ"
            echo "module = \"$dir/environ\""
        fi
    } >"$dir/node.toml"
    make_bundle "$dir/node.toml" "$dir/bundle.bin" >/dev/null
    local rc=0
    boot_engine "$engine" "$dir/bundle.bin" "$dir/serial.log" "$secs" || rc=$?
    sed -n 's/^\[kut\] //p' "$dir/serial.log" >"$dir/guest.log"
    local stop v note
    stop=$(grep -a -m1 '^vm kut stopped:' "$dir/serial.log" || true)
    if [[ $stop =~ reason=\"isa-debug-exit\ \(([0-9]+)\)\" ]]; then
        v=$(verdict_code "${BASH_REMATCH[1]}")
        note=$(note_from "$dir/guest.log")
    elif [[ -n $stop ]]; then
        v="stopped: $(sed 's/.*reason="\([^"]*\)".*/\1/' <<<"$stop")"
        note="last output: $(grep -av '^\s*$' "$dir/guest.log" | tail -1 | cut -c1-100)"
        [[ -n $(note_from "$dir/guest.log") ]] && note="$(note_from "$dir/guest.log"); $note"
    elif ((rc == 124)); then
        v="TIMEOUT (${secs}s)"
        note="last output: $(grep -av '^\s*$' "$dir/guest.log" | tail -1 | cut -c1-100)"
        [[ -n $(note_from "$dir/guest.log") ]] && note="$(note_from "$dir/guest.log"); $note"
    else
        v="ERROR (no stop line)"
        note="last line: $(tail -1 "$dir/serial.log" | cut -c1-100)"
    fi
    printf '%s|%s\n' "$v" "$note"
}

mkdir -p "$KOUT/direct"
KOUT=$(cd "$KOUT" && pwd)
RES=$KOUT/results.tsv
printf 'test\tdirect\tdirect_note\tqemu_tcg\tqemu_tcg_note\tbochs\tbochs_note\n' >"$RES"
declare -A BM_DONE=()
say "kvm-unit-tests $KUT_REV; logs in $KOUT"

if [[ -n $PROBE ]] && has_engine qemu-tcg; then
    say "probe: dummy.flat under BMonitor without the environ module (fw_cfg only)"
    r=$(run_bm qemu-tcg fwcfg-probe dummy.flat "" 30 noenv)
    printf 'fwcfg-probe (dummy.flat, no environ)\t-\t-\t%s\t%s\t-\t-\n' "${r%%|*}" "${r#*|}" >>"$RES"
    say "probe: ${r%%|*}: ${r#*|}"
fi

while IFS='|' read -r name file arch accel groups args qp check tmo; do
    [[ -n $ONLY && ! $name =~ $ONLY ]] && continue
    [[ -f $KUT/x86/$file ]] || { say "$name: x86/$file not built, skipped"; continue; }
    d=- dn= q=- qn= b=- bn=
    extra=
    [[ " $groups " == *" nodefault "* ]] && extra="nodefault (the runner skips it without -a)"
    if has_engine direct; then
        if [[ $accel == kvm ]]; then
            d="SKIP" dn="accel = kvm (the runner does not run it on TCG)"
        elif [[ -n $check ]] && ! bad=$(check_ok "$check"); then
            d="SKIP" dn="host check $bad fails (the runner skips it)"
        else
            r=$(run_direct "$name" "$file" "$args" "$qp")
            d=${r%%|*} dn=${r#*|}
        fi
        say "$name direct: $d${dn:+ ($dn)}"
    fi
    # BMonitor's vCPU and VM size are its own: entries that differ only in
    # qemu_params are one run.
    key="$file|$args"
    if has_engine qemu-tcg; then
        if [[ -n ${BM_DONE[$key]:-} ]]; then
            r=${BM_DONE[$key]}
            q=${r%%|*} qn="same run as ${r##*|}"
        else
            r=$(run_bm qemu-tcg "$name" "$file" "$args" "$T_BM")
            q=${r%%|*} qn=${r#*|}
            BM_DONE[$key]="$q|$name"
        fi
        say "$name qemu-tcg: $q${qn:+ ($qn)}"
    fi
    if has_engine bochs && [[ " $BOCHS_TESTS " == *" $name "* ]]; then
        r=$(run_bm bochs "$name" "$file" "$args" "$T_BOCHS")
        b=${r%%|*} bn=${r#*|}
        say "$name bochs: $b${bn:+ ($bn)}"
    fi
    [[ -n $extra ]] && dn="${dn:+$dn; }$extra"
    # Empty fields as "-": read's tab splitting would merge them.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$d" "${dn:--}" "$q" "${qn:--}" "$b" "${bn:--}" >>"$RES"
done < <(list_tests)

# ---------------------------------------------------------------- table
{
    echo "kvm-unit-tests $KUT_REV, BMonitor $(git -C "$ROOT" rev-parse --short HEAD)"
    echo
    echo '| test | direct QEMU TCG | under BMonitor (QEMU, SVM) | under BMonitor (Bochs, VMX) | note |'
    echo '|---|---|---|---|---|'
    tail -n +2 "$RES" | while IFS=$'\t' read -r n d dn q qn b bn; do
        note=
        [[ $dn != - ]] && note="direct: $dn"
        [[ $qn != - ]] && note="${note:+$note; }BMonitor: $qn"
        [[ $bn != - ]] && note="${note:+$note; }Bochs: $bn"
        printf '| %s | %s | %s | %s | %s |\n' "$n" "$d" "$q" "$b" "${note//|/\\|}"
    done
} >"$KOUT/table.md"
cat "$KOUT/table.md"
for col in 2 4 6; do
    printf '%s: ' "$(head -1 "$RES" | cut -f$col)"
    tail -n +2 "$RES" | cut -f$col | grep -v '^-$' | sed 's/ (.*//' | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}'
    echo
done

# Shared helpers for run.sh, test.sh and the end-to-end tests. Source it.
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BM_ELF=$TARGET_DIR/x86_64-unknown-none/release/bmonitor
BMIMAGE=$TARGET_DIR/release/bmimage
OUT=${BM_OUT:-$ROOT/out}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Debian packages each engine needs, by command.
declare -A PKG_FOR=(
    [qemu-system-x86_64]="qemu-system-x86"
    [bochs]="bochs bochsbios vgabios bochs-term"
    [grub-mkrescue]="grub-pc-bin grub-common xorriso mtools"
    [swtpm]="swtpm swtpm-tools"
    [c++]="g++"
)

# ensure_cmds CMD... : installs missing Debian packages when root, else
# names what is missing and fails.
ensure_cmds() {
    local missing=() pkgs=() c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 && continue
        missing+=("$c")
        pkgs+=(${PKG_FOR[$c]:-$c})
    done
    # grub-mkrescue also needs the BIOS platform files and xorriso/mformat.
    if [[ " $* " == *" grub-mkrescue "* ]]; then
        [[ -d /usr/lib/grub/i386-pc ]] || pkgs+=(grub-pc-bin)
        command -v xorriso >/dev/null 2>&1 || pkgs+=(xorriso)
        command -v mformat >/dev/null 2>&1 || pkgs+=(mtools)
    fi
    if [[ " $* " == *" bochs "* ]]; then
        [[ -f /usr/share/bochs/BIOS-bochs-latest ]] || pkgs+=(bochsbios)
        [[ -f /usr/share/vgabios/vgabios.bin ]] || pkgs+=(vgabios)
        dpkg -s bochs-term >/dev/null 2>&1 || pkgs+=(bochs-term)
    fi
    ((${#pkgs[@]} == 0)) && return 0
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
        say "installing Debian packages: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >/dev/null || die "apt-get update failed"
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || die "apt-get install ${pkgs[*]} failed"
    else
        die "missing ${missing[*]:-files}: install Debian packages: ${pkgs[*]} (run as root to install them automatically)"
    fi
}

# pinned_toolchain: the channel rust-toolchain.toml pins (e.g. 1.95.0).
pinned_toolchain() {
    local ch
    ch=$(sed -n 's/^[[:space:]]*channel[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$ROOT/rust-toolchain.toml" 2>/dev/null | head -1)
    [[ -n $ch ]] || die "no toolchain channel found in $ROOT/rust-toolchain.toml"
    printf '%s\n' "$ch"
}

# ensure_rust: the pinned toolchain with the x86_64-unknown-none target and
# rustfmt and clippy. rustup adds what rust-toolchain.toml lists only when it
# installs the toolchain itself, so a toolchain installed another way (or a
# target removed later) is completed here. Runs once per shell.
ensure_rust() {
    [[ -n ${BM_RUST_OK:-} ]] && return 0
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup (https://rustup.rs), then re-run"
    command -v rustup >/dev/null 2>&1 ||
        die "rustup not found: the pinned toolchain in rust-toolchain.toml needs rustup (https://rustup.rs)"
    local tc
    tc=$(pinned_toolchain)
    if ! rustup toolchain list 2>/dev/null | grep -q "^$tc[-[:space:]]"; then
        say "installing Rust toolchain $tc (pinned in rust-toolchain.toml)"
        rustup toolchain install "$tc" --profile minimal --component rustfmt,clippy --target x86_64-unknown-none ||
            die "rustup toolchain install $tc failed"
    fi
    if ! rustup target list --installed --toolchain "$tc" 2>/dev/null | grep -qx x86_64-unknown-none; then
        say "adding target x86_64-unknown-none to toolchain $tc"
        rustup target add x86_64-unknown-none --toolchain "$tc" ||
            die "rustup target add x86_64-unknown-none --toolchain $tc failed"
    fi
    local installed missing=() c
    installed=$(rustup component list --installed --toolchain "$tc" 2>/dev/null)
    for c in rustfmt clippy; do
        grep -q "^$c\(-\|$\)" <<<"$installed" || missing+=("$c")
    done
    if ((${#missing[@]})); then
        say "adding components ${missing[*]} to toolchain $tc"
        rustup component add "${missing[@]}" --toolchain "$tc" ||
            die "rustup component add ${missing[*]} --toolchain $tc failed"
    fi
    BM_RUST_OK=1
}

# ensure_rust_target TARGET: the pinned toolchain with one more target
# (e.g. x86_64-unknown-linux-musl for the guest agent).
ensure_rust_target() {
    ensure_rust
    local tc
    tc=$(pinned_toolchain)
    rustup target list --installed --toolchain "$tc" 2>/dev/null | grep -qx "$1" && return 0
    say "adding target $1 to toolchain $tc"
    rustup target add "$1" --toolchain "$tc" || die "rustup target add $1 --toolchain $tc failed"
}

# ensure_fuzz: a nightly toolchain and cargo-fuzz for the fuzz targets
# (libFuzzer needs nightly's sanitizer flags), plus the C++ compiler
# libfuzzer-sys builds libFuzzer with. Runs once per shell.
ensure_fuzz() {
    [[ -n ${BM_FUZZ_OK:-} ]] && return 0
    command -v rustup >/dev/null 2>&1 || die "rustup not found: fuzzing needs a nightly toolchain from rustup (https://rustup.rs)"
    if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
        say "installing the nightly toolchain (for the fuzz targets)"
        rustup toolchain install nightly --profile minimal ||
            die "rustup toolchain install nightly failed: fuzzing needs it (or skip fuzzing with FUZZ_SECONDS=0)"
    fi
    if ! command -v cargo-fuzz >/dev/null 2>&1; then
        say "installing cargo-fuzz (cargo install --locked cargo-fuzz)"
        cargo install --locked cargo-fuzz ||
            die "cargo install --locked cargo-fuzz failed: fuzzing needs it (or skip fuzzing with FUZZ_SECONDS=0)"
        command -v cargo-fuzz >/dev/null 2>&1 ||
            die "cargo-fuzz installed but not on PATH: add ${CARGO_HOME:-$HOME/.cargo}/bin to PATH"
    fi
    ensure_cmds c++
    BM_FUZZ_OK=1
}

# build: the hypervisor image, the test guests and the image builder.
build_all() {
    ensure_rust
    say "building BMonitor, test guests, bmimage and bmctl"
    (cd "$ROOT" &&
        cargo build --quiet --release --target x86_64-unknown-none -p hypervisor -p test-guests &&
        cargo build --quiet --release -p bmimage -p mgmt-console) || die "build failed"
}

# make_bundle CONFIG OUTFILE
make_bundle() {
    "$BMIMAGE" bundle --config "$1" --out "$2" || die "bmimage rejected $1"
}

# free_port: a TCP port on 127.0.0.1 nobody listens on, below Linux's
# ephemeral range (so no outgoing connection holds it either): QEMU's
# hostfwd and test listeners bind it.
free_port() {
    python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break'
}

# make_iso BUNDLE OUTFILE
make_iso() {
    ensure_cmds grub-mkrescue
    "$BMIMAGE" iso --hypervisor "$BM_ELF" --bundle "$1" --out "$2" >/dev/null 2>&1 ||
        "$BMIMAGE" iso --hypervisor "$BM_ELF" --bundle "$1" --out "$2" || die "ISO build failed"
}

# Does the host offer nested VT-x or AMD-V to KVM guests?
kvm_nested_available() {
    [[ -r /dev/kvm && -w /dev/kvm ]] || return 1
    local n
    if grep -qw vmx /proc/cpuinfo; then
        n=$(cat /sys/module/kvm_intel/parameters/nested 2>/dev/null)
    elif grep -qw svm /proc/cpuinfo; then
        n=$(cat /sys/module/kvm_amd/parameters/nested 2>/dev/null)
    else
        return 1
    fi
    [[ $n == Y || $n == 1 ]]
}

# QEMU's TCG accelerator: with several CPUs (BM_QEMU_SMP), one host thread
# each (multi-threaded TCG), so guests on different CPUs run in parallel.
tcg_accel() {
    if [[ ${BM_QEMU_SMP:-1} -gt 1 ]]; then echo tcg,thread=multi; else echo tcg; fi
}

# boot_engine ENGINE BUNDLE SERIAL_LOG TIMEOUT_S [FOLLOW]
# Boots BMonitor with the bundle; returns 124 on timeout. The serial log is
# the verdict: emulators' exit codes say nothing reliable (Bochs exits 1 on
# a clean ACPI power-off).
boot_engine() {
    local engine=$1 bundle=$2 log=$3 secs=$4 follow=${5:-}
    local work
    work=$(dirname "$log")
    : >"$log"
    local tailpid=
    if [[ -n $follow ]]; then
        tail -n +1 -f "$log" &
        tailpid=$!
    fi
    local rc=0
    case $engine in
    qemu-tcg | qemu-kvm)
        ensure_cmds qemu-system-x86_64
        local accel=(-accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand)
        [[ $engine == qemu-kvm ]] && accel=(-accel kvm -cpu host)
        timeout "$secs" qemu-system-x86_64 "${accel[@]}" -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -kernel "$BM_ELF" -initrd "$bundle" </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        ;;
    qemu-tcg-net)
        # q35 (ECAM) with a virtio-net uplink on QEMU user networking; the
        # management port is forwarded to 127.0.0.1:$BM_MGMT_PORT.
        ensure_cmds qemu-system-x86_64
        timeout "$secs" qemu-system-x86_64 -machine q35 -accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -netdev "user,id=uplink,hostfwd=tcp:127.0.0.1:${BM_MGMT_PORT:-7700}-:7700" -device virtio-net-pci,netdev=uplink \
            -kernel "$BM_ELF" -initrd "$bundle" </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        ;;
    qemu-tcg-net-disk | qemu-kvm-net-disk)
        # Both: the uplink (port forwarded as for qemu-tcg-net) and the node
        # disk at $BM_DISK_IMAGE. (qemu-kvm-net-disk: the same on KVM.)
        ensure_cmds qemu-system-x86_64
        local nd_accel=(-accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand)
        [[ $engine == qemu-kvm-net-disk ]] && nd_accel=(-accel kvm -cpu host)
        timeout "$secs" qemu-system-x86_64 -machine q35 "${nd_accel[@]}" -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -netdev "user,id=uplink,hostfwd=tcp:127.0.0.1:${BM_MGMT_PORT:-7700}-:7700${BM_DISCARD_PORT:+,hostfwd=tcp:127.0.0.1:$BM_DISCARD_PORT-:9}" -device virtio-net-pci,netdev=uplink \
            ${BM_QEMU_MONITOR:+-monitor unix:$BM_QEMU_MONITOR,server,nowait} \
            -drive "file=${BM_DISK_IMAGE:?BM_DISK_IMAGE names the node disk image},format=raw,if=none,id=nodedisk,cache=writeback" \
            -device virtio-blk-pci,drive=nodedisk \
            -kernel "$BM_ELF" -initrd "$bundle" </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        ;;
    qemu-tcg-disk)
        # q35 (ECAM) with a virtio-blk node disk at $BM_DISK_IMAGE (raw).
        ensure_cmds qemu-system-x86_64
        timeout ${BM_KILL_SIGNAL:+-s $BM_KILL_SIGNAL} "$secs" qemu-system-x86_64 -machine q35 -accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -drive "file=${BM_DISK_IMAGE:?BM_DISK_IMAGE names the node disk image},format=raw,if=none,id=nodedisk,cache=writeback" \
            -device virtio-blk-pci,drive=nodedisk \
            -kernel "$BM_ELF" -initrd "$bundle" </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        ;;
    qemu-tcg-disk-iso)
        # As qemu-tcg-disk, booted through GRUB, with a TPM 2.0 (swtpm,
        # state in $BM_TPM_DIR) unless BM_TPM_DIR is empty. (With a TPM,
        # QEMU's -initrd placement collides with the larger ACPI tables.)
        ensure_cmds qemu-system-x86_64 swtpm
        make_iso "$bundle" "$work/node.iso"
        local tpm=() swtpm_pid=
        if [[ -n ${BM_TPM_DIR:-} ]]; then
            mkdir -p "$BM_TPM_DIR"
            rm -f "$BM_TPM_DIR/swtpm.sock"
            swtpm socket --tpm2 --tpmstate "dir=$BM_TPM_DIR" --ctrl "type=unixio,path=$BM_TPM_DIR/swtpm.sock" \
                --terminate --log "file=$BM_TPM_DIR/swtpm.log" &
            swtpm_pid=$!
            for _ in $(seq 50); do [[ -S $BM_TPM_DIR/swtpm.sock ]] && break; sleep 0.1; done
            tpm=(-chardev "socket,id=chrtpm,path=$BM_TPM_DIR/swtpm.sock" -tpmdev emulator,id=tpm0,chardev=chrtpm
                -device tpm-tis,tpmdev=tpm0)
        fi
        timeout "$secs" qemu-system-x86_64 -machine q35 -accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -drive "file=${BM_DISK_IMAGE:?BM_DISK_IMAGE names the node disk image},format=raw,if=none,id=nodedisk,cache=writeback" \
            -device virtio-blk-pci,drive=nodedisk "${tpm[@]}" \
            -cdrom "$work/node.iso" -boot d </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        [[ -n $swtpm_pid ]] && { kill "$swtpm_pid" 2>/dev/null; wait "$swtpm_pid" 2>/dev/null; }
        ;;
    qemu-tcg-iso)
        ensure_cmds qemu-system-x86_64
        make_iso "$bundle" "$work/node.iso"
        timeout "$secs" qemu-system-x86_64 -accel "$(tcg_accel)" -cpu qemu64,+svm,+npt,+rdrand -smp "${BM_QEMU_SMP:-1}" -m ${BM_QEMU_MEM:-512} -display none -no-reboot \
            -serial "file:$log" -device isa-debug-exit,iobase=0xf4,iosize=0x04 \
            -cdrom "$work/node.iso" -boot d </dev/null >"$work/qemu.out" 2>&1 || rc=$?
        ;;
    bochs)
        ensure_cmds bochs
        make_iso "$bundle" "$work/node.iso"
        cat >"$work/bochsrc" <<BOCHSRC
megs: 512
cpu: model=corei7_haswell_4770, count=${BM_BOCHS_CPUS:-1}, ips=50000000, reset_on_triple_fault=0
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path=$work/node.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$log
${BM_COM2_PORT:+com2: enabled=1, mode=socket-server, dev=localhost:$BM_COM2_PORT}
display_library: term
magic_break: enabled=0
clock: sync=none
log: $work/bochsout.txt
panic: action=fatal
error: action=report
info: action=ignore
BOCHSRC
        echo c >"$work/bochs-cont.rc"
        timeout "$secs" bochs -q -f "$work/bochsrc" -rc "$work/bochs-cont.rc" </dev/null >"$work/bochs.out" 2>&1 || rc=$?
        ;;
    *) die "unknown engine $engine (bochs, qemu-tcg, qemu-kvm)" ;;
    esac
    if [[ -n $tailpid ]]; then
        sleep 0.3
        kill "$tailpid" 2>/dev/null
        wait "$tailpid" 2>/dev/null
    fi
    # The UART sends CRLF; tests and users read plain lines.
    sed -i 's/\r$//' "$log"
    [[ $rc == 124 ]] && return 124
    return 0
}

#!/usr/bin/env bash
# Builds the Linux guest for BMonitor tenant VMs: Debian's cloud kernel and a
# busybox initramfs (virtio-mmio modules, iperf3, mke2fs, tests/linux/init),
# plus one small overlay per role (tests/linux/roles), and the agent image
# (DIR/agent/vmlinuz + initrd.img: bm-agent, built for
# x86_64-unknown-linux-musl, and a demo service, put together by
# `bmimage guest`; DIR/agent-v1 and DIR/agent-v2 are the same image with
# /srv/www/version saying v1 or v2). With --qemu-direct it boots that guest straight on QEMU
# TCG as the baseline BMonitor is measured against. See tests/linux/README.md.
#
#   scripts/linux-guest.sh [--out DIR]            # build into target/linux
#   scripts/linux-guest.sh --qemu-direct [ROLE]   # build, then boot ROLE (hello)
#
# Options: --out DIR, --qemu-direct [ROLE], --machine microvm|pc|q35,
# --timeout SECONDS, --mac MAC (default 52:54:00:00:00:01), --disk FILE
# (raw image for the disk roles, default DIR/disk.img), --new-disk (recreate
# it), --verbose (the whole console), --no-fetch (use the cache as it is),
# --no-agent (skip bm-agent and DIR/agent).
# Downloads go to ${BM_CACHE:-$HOME/.cache/bmonitor}/linux, never the repo.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

LOUT=$ROOT/target/linux
ROLE=
MACHINE=microvm
TIMEOUT=
MAC=52:54:00:00:00:01
DISK=
NEW_DISK=
VERBOSE=
FETCH=1
AGENT=1
while (($#)); do
    case $1 in
    --out) LOUT=$2; shift 2 ;;
    --qemu-direct)
        ROLE=hello
        if [[ ${2:-} != "" && ${2:-} != -* ]]; then ROLE=$2; shift; fi
        shift ;;
    --machine) MACHINE=$2; shift 2 ;;
    --timeout) TIMEOUT=$2; shift 2 ;;
    --mac) MAC=$2; shift 2 ;;
    --disk) DISK=$2; shift 2 ;;
    --new-disk) NEW_DISK=1; shift ;;
    --verbose) VERBOSE=1; shift ;;
    --no-fetch) FETCH=; shift ;;
    --no-agent) AGENT=; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
    esac
done
mkdir -p "$LOUT"
LOUT=$(cd "$LOUT" && pwd)

CACHE=${BM_CACHE:-$HOME/.cache/bmonitor}/linux
DEBS=$CACHE/debs
EX=$CACHE/extract
GUEST=$ROOT/tests/linux
MULTIARCH=x86_64-linux-gnu
# Modules the guest loads, with their dependencies added from the modules'
# own depends= fields. virtio_pci only matters for the -M pc/q35 baseline.
WANT_MODULES=(virtio virtio_ring virtio_mmio virtio_net virtio_blk virtio_pci)

# ---------------------------------------------------------------- fetching

apt_quiet=(-qq)
[[ $(id -u) -eq 0 ]] && apt_quiet+=(-o APT::Sandbox::User=root)
APT_UPDATED=

apt_update() {
    [[ -n $APT_UPDATED ]] && return 0
    APT_UPDATED=1
    if [[ $(id -u) -eq 0 ]]; then
        say "apt-get update"
        apt-get update -qq >/dev/null || die "apt-get update failed"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        say "sudo apt-get update"
        sudo -n apt-get update -qq >/dev/null || die "apt-get update failed"
    else
        die "apt cannot find the packages and apt-get update needs root: run 'apt-get update' as root"
    fi
}

# pkg_known PKG: apt has a candidate for PKG.
pkg_known() { local p; p=$(apt-cache policy "$1" 2>/dev/null); [[ $p == *"Candidate: "[!\(]* ]]; }

# lib_deps PKG: the library packages PKG (Pre-)Depends on.
lib_deps() {
    apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
        --no-replaces --no-enhances "$1" 2>/dev/null |
        awk '($1 == "Depends:" || $1 == "PreDepends:" || $1 == "|Depends:" || $1 == "|PreDepends:") && $2 !~ /^</ { print $2 }' |
        sed 's/:any$//' | grep '^lib' || true
}

# with_lib_deps PKG...: the packages and, recursively, their library deps.
with_lib_deps() {
    local -A seen=()
    local queue=("$@") p d
    while ((${#queue[@]})); do
        p=${queue[0]}
        queue=("${queue[@]:1}")
        [[ -n ${seen[$p]:-} ]] && continue
        seen[$p]=1
        printf '%s\n' "$p"
        for d in $(lib_deps "$p"); do queue+=("$d"); done
    done
}

have_deb() { compgen -G "$DEBS/${1}_*.deb" >/dev/null; }

fetch() {
    mkdir -p "$DEBS"
    command -v apt-get >/dev/null || die "apt-get not found: this script fetches Debian packages with apt-get download"
    pkg_known linux-image-cloud-amd64 && pkg_known busybox-static || apt_update
    pkg_known linux-image-cloud-amd64 || die "apt knows no linux-image-cloud-amd64 (is a Debian bookworm archive in the apt sources?)"
    local kpkg
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
    [[ -n $kpkg ]] || die "cannot resolve the kernel package linux-image-cloud-amd64 depends on"
    local pkgs=() p missing=()
    mapfile -t pkgs < <(printf '%s\n' "$kpkg" busybox-static; with_lib_deps iperf3 e2fsprogs)
    for p in "${pkgs[@]}"; do have_deb "$p" || missing+=("$p"); done
    if ((${#missing[@]})); then
        say "downloading ${missing[*]} into $DEBS"
        (cd "$DEBS" && apt-get download "${apt_quiet[@]}" "${missing[@]}") ||
            die "apt-get download ${missing[*]} failed"
    fi
    printf '%s\n' "${pkgs[@]}" >"$CACHE/packages"
}

extract() {
    local p deb stamp
    mkdir -p "$EX"
    while read -r p; do
        deb=$(compgen -G "$DEBS/${p}_*.deb" | sort -V | tail -1)
        [[ -n $deb ]] || die "no .deb for $p in $DEBS (run without --no-fetch)"
        stamp=$EX/.done-$(basename "$deb")
        [[ -e $stamp ]] && continue
        dpkg-deb -x "$deb" "$EX" || die "dpkg-deb -x $deb failed"
        : >"$stamp"
    done <"$CACHE/packages"
}

# ---------------------------------------------------------------- initramfs

# A newc cpio writer (no cpio needed, and it can add device nodes without
# root). cpio_entry NAME MODE_HEX SIZE RDEVMAJ RDEVMIN: the header and name.
CPIO_INO=1000
cpio_pad() {
    case $(($1 % 4)) in 1) printf '\0\0\0' ;; 2) printf '\0\0' ;; 3) printf '\0' ;; esac
}
cpio_entry() {
    local name=$1 mode=$((16#$2)) size=$3 nlink=1
    (((mode & 0170000) == 0040000)) && nlink=2
    CPIO_INO=$((CPIO_INO + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$CPIO_INO" "$mode" 0 0 "$nlink" 0 "$size" 0 0 "$4" "$5" $((${#name} + 1)) 0
    printf '%s\0' "$name"
    cpio_pad $((110 + ${#name} + 1))
}
# cpio_dir DIR [dev]: a gzipped newc archive of DIR's tree on stdout, owned by
# root; with "dev", /dev and /dev/console come first (the kernel opens
# /dev/console for init's stdio before init mounts devtmpfs).
cpio_dir() {
    local dir=$1 f mode size t
    {
        if [[ ${2:-} == dev ]]; then
            cpio_entry dev 41ed 0 0 0
            cpio_entry dev/console 2180 0 5 1
        fi
        while IFS= read -r f; do
            read -r mode size < <(stat -c '%f %s' "$dir/$f")
            if [[ -L $dir/$f ]]; then
                t=$(readlink "$dir/$f")
                cpio_entry "$f" "$mode" "${#t}" 0 0
                printf '%s' "$t"
                cpio_pad "${#t}"
            elif [[ -f $dir/$f ]]; then
                cpio_entry "$f" "$mode" "$size" 0 0
                cat "$dir/$f"
                cpio_pad "$size"
            else
                cpio_entry "$f" "$mode" 0 0 0
            fi
        done < <(cd "$dir" && find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort)
        cpio_entry 'TRAILER!!!' 0 0 0 0
    } | gzip -9n
}

# module_order: paths (relative to lib/modules/KVER) of WANT_MODULES and
# their dependencies, dependencies first.
module_order() {
    local mdir=$1 m
    local -A path=() done=()
    while read -r m; do
        local b=${m##*/}
        b=${b%%.ko*}
        path[${b//-/_}]=$m
    done <"$mdir/modules.order"
    visit() {
        local n=${1//-/_} f d deps
        [[ -n ${done[$n]:-} ]] && return 0
        done[$n]=1
        f=${path[$n]:-}
        if [[ -z $f ]]; then
            grep -q "/${1}.ko" "$mdir/modules.builtin" 2>/dev/null && return 0
            die "module $1 is neither in modules.order nor built in"
        fi
        deps=$(modinfo_depends "$mdir/$f")
        for d in ${deps//,/ }; do visit "$d"; done
        printf '%s\n' "$f"
    }
    for m in "${WANT_MODULES[@]}"; do visit "$m"; done
}
module_text() { # the module file, decompressed, on stdout
    case $1 in
    *.ko) cat "$1" ;;
    *.ko.xz) xz -dc "$1" ;;
    *.ko.zst) zstd -dcq "$1" ;;
    *.ko.gz) gzip -dc "$1" ;;
    *) die "unknown module format $1" ;;
    esac
}
modinfo_depends() { module_text "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | head -1; }

# lib_closure BINARY...: the shared libraries the binaries load, resolved
# by the downloaded loader against the downloaded libraries only.
lib_closure() {
    local ld=$EX/lib/$MULTIARCH/ld-linux-x86-64.so.2 b l
    [[ -x $ld ]] || die "no loader in the libc6 package ($ld)"
    local lp=$EX/lib/$MULTIARCH:$EX/usr/lib/$MULTIARCH
    for b in "$@"; do
        "$ld" --library-path "$lp" --list "$b" >"$LOUT/.ldd" 2>&1 || die "cannot list the libraries of $b: $(cat "$LOUT/.ldd")"
        while read -r l; do
            case $l in
            *'not found'*) die "$b: library not in the downloaded packages: $l" ;;
            *'=>'*) l=${l#*=> }; l=${l%% (*} ;;
            *) continue ;;
            esac
            [[ $l == "$EX"/* ]] || die "$b: $l does not come from the downloaded packages"
            printf '%s\n' "$l"
        done <"$LOUT/.ldd"
    done | sort -u
    rm -f "$LOUT/.ldd"
}

build() {
    local kver kimg stage=$LOUT/stage
    kver=$(sed -n 's/^linux-image-//p' "$CACHE/packages" | head -1)
    kimg=$EX/boot/vmlinuz-$kver
    [[ -n $kver && -f $kimg ]] || die "no vmlinuz-$kver in the kernel package"
    local mdir=$EX/lib/modules/$kver
    say "building the initramfs for kernel $kver in $LOUT"
    cp "$kimg" "$LOUT/vmlinuz"
    rm -rf "$stage"
    mkdir -p "$stage"/{bin,sbin,etc,proc,sys,tmp,mnt,run,root,lib64,usr/bin,usr/sbin,lib/bm,lib/$MULTIARCH,lib/modules/"$kver"}
    chmod 1777 "$stage/tmp"

    # busybox and its applets (symlinks; init re-installs them if this host
    # could not run busybox to list them).
    install -m 755 "$EX/bin/busybox" "$stage/bin/busybox"
    ln -s busybox "$stage/bin/sh"
    local a
    if "$stage/bin/busybox" --list >"$LOUT/.applets" 2>/dev/null; then
        while read -r a; do
            [[ $a == busybox || $a == sh ]] && continue
            ln -s busybox "$stage/bin/$a"
        done <"$LOUT/.applets"
    fi
    rm -f "$LOUT/.applets"

    # Modules, dependencies first; decompressed so busybox insmod loads them.
    local m
    module_order "$mdir" >"$LOUT/.modules" || die "cannot order the modules"
    : >"$stage/etc/bm-modules"
    while read -r m; do
        mkdir -p "$stage/lib/modules/$kver/$(dirname "$m")"
        module_text "$mdir/$m" >"$stage/lib/modules/$kver/${m%%.ko*}.ko"
        printf '%s\n' "${m%%.ko*}.ko" >>"$stage/etc/bm-modules"
    done <"$LOUT/.modules"
    rm -f "$LOUT/.modules"

    # iperf3 and e2fsprogs' mke2fs (busybox's makes ext2 only), with the
    # libraries from the downloaded packages.
    install -m 755 "$EX/usr/bin/iperf3" "$stage/usr/bin/iperf3"
    install -m 755 "$EX/sbin/mke2fs" "$stage/sbin/mke2fs"
    rm -f "$stage/bin/mke2fs" "$stage/bin/mkfs.ext2"
    ln -s mke2fs "$stage/sbin/mkfs.ext4"
    [[ -f $EX/etc/mke2fs.conf ]] && install -m 644 "$EX/etc/mke2fs.conf" "$stage/etc/mke2fs.conf"
    local l
    lib_closure "$EX/usr/bin/iperf3" "$EX/sbin/mke2fs" >"$LOUT/.libs" || die "cannot resolve the shared libraries"
    while read -r l; do
        cp -L "$l" "$stage/lib/$MULTIARCH/${l##*/}"
    done <"$LOUT/.libs"
    rm -f "$LOUT/.libs"
    ln -s ../lib/$MULTIARCH/ld-linux-x86-64.so.2 "$stage/lib64/ld-linux-x86-64.so.2"

    install -m 755 "$GUEST/init" "$stage/init"
    install -m 644 "$GUEST/common.sh" "$stage/lib/bm/common.sh"
    # The agent role is in the base, so any `bmimage guest` image has it.
    install -D -m 644 "$GUEST/roles/agent.sh" "$stage/etc/bm-roles/agent.sh"
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$stage/etc/passwd"
    printf 'root:x:0:\n' >"$stage/etc/group"
    printf '127.0.0.1 localhost\n' >"$stage/etc/hosts"
    cpio_dir "$stage" dev >"$LOUT/initramfs.cpio.gz.tmp"
    mv "$LOUT/initramfs.cpio.gz.tmp" "$LOUT/initramfs.cpio.gz"

    # Static probes some roles run (tests/linux/probes), built for musl.
    local musl=x86_64-unknown-linux-musl
    ensure_rust_target "$musl"
    (cd "$ROOT" && cargo build --quiet --release --target "$musl" -p linux-probes) ||
        die "cannot build the Linux probes (tests/linux/probes)"
    local probes=${CARGO_TARGET_DIR:-$ROOT/target}/$musl/release

    # One overlay per role: /etc/bm-role and the role's script.
    local r roles=(shell) ov=$LOUT/overlay
    for r in "$GUEST"/roles/*.sh; do roles+=("$(basename "$r" .sh)"); done
    rm -f "$LOUT"/role-*.cpio.gz "$LOUT"/initrd-*.img
    for r in "${roles[@]}"; do
        rm -rf "$ov"
        mkdir -p "$ov/etc/bm-roles"
        printf '%s\n' "$r" >"$ov/etc/bm-role"
        [[ -f $GUEST/roles/$r.sh ]] && install -m 644 "$GUEST/roles/$r.sh" "$ov/etc/bm-roles/$r.sh"
        [[ $r == smp ]] && install -D -m 755 "$probes/ipi-latency" "$ov/usr/bin/ipi-latency"
        cpio_dir "$ov" >"$LOUT/role-$r.cpio.gz"
        cat "$LOUT/initramfs.cpio.gz" "$LOUT/role-$r.cpio.gz" >"$LOUT/initrd-$r.img"
    done
    rm -rf "$ov" "$stage"
    printf '%s\n' "$kver" >"$LOUT/kernel-version"
    say "kernel $kver: $LOUT/vmlinuz ($(du -k "$LOUT/vmlinuz" | cut -f1) KiB), initramfs.cpio.gz $(du -k "$LOUT/initramfs.cpio.gz" | cut -f1) KiB, roles: ${roles[*]}"
}

# ---------------------------------------------------------------- agent

# The guest agent (static musl binary) and the agent image: kernel, base
# initramfs and an overlay with bm-agent, /etc/bm-role = agent, a small web
# root and one demo service (busybox httpd, restarted on failure).
build_agent() {
    local musl=x86_64-unknown-linux-musl tdir=${CARGO_TARGET_DIR:-$ROOT/target}
    ensure_rust_target "$musl"
    say "building bm-agent ($musl) and bmimage"
    (cd "$ROOT" && cargo build --quiet --release --target "$musl" -p guest-agent &&
        cargo build --quiet --release -p bmimage) || die "cannot build bm-agent (guest-agent) or bmimage"
    local agent=$tdir/$musl/release/bm-agent files=$LOUT/agent-files
    [[ -x $agent ]] || die "no $agent after the build"
    rm -rf "$files"
    mkdir -p "$files/srv/www"
    printf '<html><body><p>hello from a BMonitor tenant VM</p></body></html>\n' >"$files/srv/www/index.html"
    "$tdir/release/bmimage" guest --kernel "$LOUT/vmlinuz" --base-initrd "$LOUT/initramfs.cpio.gz" \
        --agent "$agent" --files "$files" --service 'web=httpd -f -p 8080 -h /srv/www' \
        --out "$LOUT/agent" >/dev/null || die "bmimage guest failed"
    # Two versions of the same service for the runbook-* scenarios
    # (tests/e2e/runbook.sh): DIR/agent-v1 and DIR/agent-v2 differ only in
    # /srv/www/version ("v1" or "v2"), which the web service serves on 8080;
    # a second service says it on the console at each boot ("BMLINUX web
    # version v1"), so a node's log shows which version each boot ran.
    local v
    mkdir -p "$files/usr/bin"
    printf '#!/bin/sh\necho "BMLINUX web version $(cat /srv/www/version)" >/dev/console\nexec sleep 2147483647\n' >"$files/usr/bin/bm-version"
    chmod 755 "$files/usr/bin/bm-version"
    for v in v1 v2; do
        printf '%s\n' "$v" >"$files/srv/www/version"
        "$tdir/release/bmimage" guest --kernel "$LOUT/vmlinuz" --base-initrd "$LOUT/initramfs.cpio.gz" \
            --agent "$agent" --files "$files" --service 'web=httpd -f -p 8080 -h /srv/www' \
            --service 'version=/usr/bin/bm-version' --out "$LOUT/agent-$v" >/dev/null || die "bmimage guest ($v) failed"
    done
    rm -rf "$files"
    say "agent image: $LOUT/agent/vmlinuz ($(du -k "$LOUT/agent/vmlinuz" | cut -f1) KiB), initrd.img $(du -k "$LOUT/agent/initrd.img" | cut -f1) KiB (bm-agent $(du -k "$agent" | cut -f1) KiB, service web)"
}

# ---------------------------------------------------------------- baseline

HOST_IPERF_PID=
host_iperf() { # ARGS...: the downloaded iperf3 on this host
    "$EX/lib/$MULTIARCH/ld-linux-x86-64.so.2" --library-path "$EX/lib/$MULTIARCH:$EX/usr/lib/$MULTIARCH" "$EX/usr/bin/iperf3" "$@"
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

qemu_direct() {
    local role=$1 initrd=$LOUT/initrd-$1.img
    [[ -f $initrd ]] || die "no role $role (have: $(cd "$LOUT" && ls initrd-*.img | sed 's/initrd-//; s/\.img//' | tr '\n' ' '))"
    ensure_cmds qemu-system-x86_64
    local secs=${TIMEOUT:-120}
    [[ $role == idle && -z $TIMEOUT ]] && secs=180
    local net=() disk=() mach=()
    # User networking on 10.0.0.0/24 with QEMU's host at 10.0.0.2, so the
    # peer roles have a peer: ping works, and TCP to 10.0.0.2 reaches this
    # host's 127.0.0.1 (where iperf-client finds a host iperf3 server).
    local ndev="user,id=n0,net=10.0.0.0/24,host=10.0.0.2,dns=10.0.0.53,dhcpstart=10.0.0.100"
    local fwd_port=
    if [[ $role == iperf-server ]]; then
        fwd_port=15201
        while ! port_free $fwd_port; do fwd_port=$((fwd_port + 1)); done
        ndev+=",hostfwd=tcp:127.0.0.1:$fwd_port-10.0.0.$((16#${MAC##*:})):5201"
    fi
    case $MACHINE in
    microvm)
        mach=(-M microvm,acpi=on)
        [[ $role != hello ]] && net=(-device "virtio-net-device,netdev=n0,mac=$MAC" -netdev "$ndev")
        ;;
    pc | q35)
        mach=(-M "$MACHINE")
        [[ $role != hello ]] && net=(-device "virtio-net-pci,netdev=n0,mac=$MAC" -netdev "$ndev")
        ;;
    *) die "unknown machine $MACHINE (microvm, pc, q35)" ;;
    esac
    if [[ $role == disk-* || $role == shell ]]; then
        local img=${DISK:-$LOUT/disk.img}
        if [[ -n $NEW_DISK || ! -f $img ]]; then
            rm -f "$img"
            truncate -s 64M "$img"
        fi
        local bus=device
        [[ $MACHINE != microvm ]] && bus=pci
        disk=(-device "virtio-blk-$bus,drive=d0" -drive "if=none,id=d0,file=$img,format=raw")
    fi
    if [[ $role == iperf-client ]]; then
        if port_free 5201; then
            host_iperf -s -1 -B 127.0.0.1 -p 5201 >"$LOUT/host-iperf3.log" 2>&1 &
            HOST_IPERF_PID=$!
        else
            say "port 5201 is in use on this host: iperf-client will have no server"
        fi
    fi
    local cmd=(qemu-system-x86_64 "${mach[@]}" -accel tcg -m 256 -nographic -no-reboot
        -kernel "$LOUT/vmlinuz" -initrd "$initrd" -append "console=ttyS0" "${net[@]}" "${disk[@]}")
    say "booting role $role: ${cmd[*]}"
    if [[ $role == shell ]]; then
        "${cmd[@]}"
        return
    fi
    local log=$LOUT/direct-$role.log start up= line rc= attempt stalled pidf=$LOUT/.qemu-pid
    for attempt in 1 2 3; do
        : >"$log"
        up= rc= stalled=
        start=$EPOCHREALTIME
        while IFS= read -r line; do
            line=${line%$'\r'}
            if [[ $line == "BMLINUX-HOST rc="* ]]; then
                rc=${line#*=}
                break
            fi
            printf '%s\n' "$line" >>"$log"
            if [[ -z $up && $line == *"BMLINUX userspace up"* ]]; then
                up=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
            fi
            if [[ -n $VERBOSE ]]; then
                printf '%s\n' "$line"
            elif [[ $line == BMLINUX* || $line == *"Kernel panic"* ]]; then
                printf '%s\n' "$line"
            fi
            # Under TCG the kernel's PIT calibration of the TSC sometimes
            # fails; microvm has no HPET or PM timer to fall back on, and
            # the boot then hangs. Such a run measures nothing: retry it.
            if [[ -z $up && -z $stalled && $line == *"Marking TSC unstable due to could not calculate TSC khz"* ]]; then
                stalled=1
                kill "$(cat "$pidf")" 2>/dev/null || true
            fi
            if [[ -n $fwd_port && $line == *"iperf3-server: Server listening"* ]]; then
                # This host is the client, through the forwarded port.
                (for _ in 1 2 3 4 5; do
                    host_iperf -c 127.0.0.1 -p "$fwd_port" -t 5 -f m >"$LOUT/host-iperf3.log" 2>&1 && break
                    sleep 1
                done) &
            fi
        done < <(r=0
            timeout "$secs" "${cmd[@]}" </dev/null 2>&1 &
            echo $! >"$pidf"
            wait $! || r=$?
            echo
            echo "BMLINUX-HOST rc=$r")
        rm -f "$pidf"
        [[ -z $stalled ]] && break
        say "attempt $attempt: the kernel could not calibrate its TSC (a TCG timing accident; no HPET/PM timer on microvm): booting again"
    done
    if [[ -n $HOST_IPERF_PID ]]; then
        kill "$HOST_IPERF_PID" 2>/dev/null || true
        wait "$HOST_IPERF_PID" 2>/dev/null || true
    fi
    wait 2>/dev/null || true
    local total
    total=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }')
    [[ -z $stalled ]] || die "linux-direct: the kernel failed TSC calibration in $attempt boots on -M $MACHINE (console in $log)"
    [[ -n $up ]] || die "linux-direct: no 'BMLINUX userspace up' within ${secs}s on -M $MACHINE (rc=$rc, console in $log)"
    printf 'linux-direct machine: %s\n' "$MACHINE"
    printf 'linux-direct first-userspace-seconds: %s\n' "$up"
    printf 'linux-direct total-seconds: %s\n' "$total"
    [[ $rc == 124 ]] && die "linux-direct: role $role did not power off within ${secs}s (console in $log)"
    grep -q "^BMLINUX role $role exit 0" "$log" || die "linux-direct: role $role did not finish (console in $log)"
    if grep -Eq '^BMLINUX .*(fail|failed|mismatch|missing)( |$)' "$log"; then
        die "linux-direct: role $role reported a failure (console in $log)"
    fi
    return 0
}

if [[ -n $FETCH ]]; then fetch; fi
[[ -f $CACHE/packages ]] || die "nothing fetched yet in $CACHE (run without --no-fetch)"
extract
build
if [[ -n $AGENT ]]; then build_agent; fi
if [[ -n $ROLE ]]; then qemu_direct "$ROLE"; fi

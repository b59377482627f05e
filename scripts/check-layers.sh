#!/usr/bin/env bash
# Fails when a module of hypervisor/src imports one above it in the layer
# order written in docs/architecture.md. Usage: scripts/check-layers.sh
set -euo pipefail
cd "$(dirname "$0")/../hypervisor/src"
order=(arch mm drivers storage devices virt vm net mgmt node main)
rank() {
    local i=0
    for l in "${order[@]}"; do
        [[ $l == "$1" ]] && { echo $i; return; }
        i=$((i + 1))
    done
    echo 99
}
bad=0
while IFS= read -r f; do
    m=${f#./}
    m=${m%%/*}
    m=${m%.rs}
    rm_=$(rank "$m")
    while IFS=: read -r ln target; do
        target=${target#crate::}
        [[ $target == log || $target == "$m" ]] && continue
        rt=$(rank "$target")
        if ((rt == 99)); then
            echo "check-layers: $f:$ln uses crate::$target, which is not in the layer order" >&2
            bad=1
        elif ((rt > rm_)); then
            echo "check-layers: $f:$ln: $m imports $target, which is above it" >&2
            bad=1
        fi
    done < <(grep -noE 'crate::[a-z_0-9]+' "$f" || true)
done < <(find . -name '*.rs' | sort)
if ((bad)); then
    echo "check-layers: imports must run downward: ${order[*]}" >&2
    exit 1
fi
echo "check-layers: ok (${order[*]})"

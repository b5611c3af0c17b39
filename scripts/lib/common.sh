# Shared shell functions for the scripts in scripts/. Source it; do not run it.
# shellcheck shell=bash

LZ_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LZ_KERNEL="$LZ_ROOT/target/x86_64-unknown-none/release/lazarus"

lz_say() { printf 'lazarus: %s\n' "$*" >&2; }
lz_die() { printf 'lazarus: error: %s\n' "$*" >&2; exit 1; }

# Debian packages each part of the project needs.
LZ_PKGS_IMAGE="grub-common grub-pc-bin grub-efi-amd64-bin xorriso mtools"
LZ_PKGS_BOCHS="bochs bochs-term bochsbios vgabios"
LZ_PKGS_QEMU="qemu-system-x86 ovmf"
LZ_PKGS_RUN="socat python3"
LZ_PKGS_CHART="python3 python3-matplotlib"

# Installs the Debian packages that are not installed yet: apt-get as root, or through
# sudo; on a system without apt-get, names the packages and stops.
lz_ensure_packages() {
    local missing
    missing=$(lz_missing_packages "$@")
    [ -z "$missing" ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        lz_die "missing packages: $missing (this system has no apt-get: install the equivalents of these Debian packages by hand)"
    fi
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || lz_die "missing packages: $missing; run as root or install sudo"
        sudo=(sudo)
    fi
    lz_lock_packages
    # Another script may have installed them while this one waited for the lock.
    missing=$(lz_missing_packages "$@")
    if [ -n "$missing" ]; then
        lz_say "installing $missing"
        # The package lists may be absent on a fresh machine: update once, then install.
        # shellcheck disable=SC2086 # one word per package
        if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >/dev/null 2>&1; then
            "${sudo[@]}" apt-get update -q >/dev/null || lz_die "apt-get update failed"
            # shellcheck disable=SC2086
            "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing \
                || lz_die "apt-get could not install: $missing"
        fi
    fi
    lz_unlock_packages
}

# The project's lock on the package manager: two of its scripts (the tests start several
# at once, each of which may install a package or update the lists) must never race for
# apt-get, which refuses to run twice. Every apt-get call that changes something runs
# between lz_lock_packages and lz_unlock_packages.
LZ_PACKAGE_LOCK="${TMPDIR:-/tmp}/lazarus-packages.lock"
lz_lock_packages() {
    exec {LZ_PACKAGE_FD}>>"$LZ_PACKAGE_LOCK" || lz_die "cannot open $LZ_PACKAGE_LOCK"
    flock "$LZ_PACKAGE_FD" || lz_die "cannot lock $LZ_PACKAGE_LOCK"
}
lz_unlock_packages() {
    exec {LZ_PACKAGE_FD}>&-
}

# The packages among "$@" that are not installed, space-separated.
lz_missing_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    printf '%s' "${missing[*]}"
}

# Makes sure cargo is there; rust-toolchain.toml then makes rustup fetch the pinned
# toolchain, the bare-metal target and the components.
lz_ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        if command -v apt-get >/dev/null 2>&1 && apt-cache show rustup >/dev/null 2>&1; then
            lz_ensure_packages rustup
        else
            lz_die "no Rust toolchain: install rustup (https://rustup.rs), then run this again"
        fi
    fi
    if command -v rustup >/dev/null 2>&1; then
        # Installs (or confirms, in a fraction of a second) the pinned toolchain with the
        # targets and components that rust-toolchain.toml lists.
        (cd "$LZ_ROOT" && rustup toolchain install >/dev/null) \
            || lz_die "rustup could not install the toolchain pinned in rust-toolchain.toml"
    else
        lz_say "no rustup: using $(cargo --version) as it is; the bare-metal target x86_64-unknown-none must be installed"
    fi
}

# Builds the multiboot2 ELF (target/x86_64-unknown-none/release/lazarus).
lz_build_kernel() {
    lz_ensure_rust
    (cd "$LZ_ROOT" && cargo kernel --quiet) || lz_die "the bare-metal build failed"
    [ -f "$LZ_KERNEL" ] || lz_die "build produced no $LZ_KERNEL"
}

# Prints a TCP port that is free on 127.0.0.1 right now.
lz_free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# True when this host can run Lazarus under QEMU/KVM with nested VT-x.
lz_have_nested_vmx() {
    [ -r /dev/kvm ] && [ -w /dev/kvm ] || return 1
    grep -qw vmx /proc/cpuinfo || return 1
    local nested
    nested=$(cat /sys/module/kvm_intel/parameters/nested 2>/dev/null) || return 1
    [ "$nested" = Y ] || [ "$nested" = 1 ]
}

#!/usr/bin/env bash
# Builds every Spillway transformation plugin into transforms/build/<name>.wasm.
#   {examples,hostile}/*.c    -> clang (Debian's clang 14 + wasi-libc), a WASI preview 1 reactor
#   {examples,hostile}/*.rs   -> Debian's rustc + libstd-rust-dev-wasm32 (target wasm32-wasi)
#   {examples,hostile}/*.wat  -> wat2wasm (wabt)
# Installs missing Debian packages (needs root and apt-get). Rebuilds only what is
# out of date. Usage: transforms/build.sh [--force]
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="$here/build"
force=0
[[ "${1:-}" == "--force" ]] && force=1

die() { echo "build.sh: error: $*" >&2; exit 1; }

CLANG=clang
RUSTC=/usr/bin/rustc   # Debian's, not rustup's: rustup's toolchain here has no wasm32 target
WAT2WASM=wat2wasm

# --- toolchain check / install --------------------------------------------------
missing=()
command -v "$CLANG" >/dev/null 2>&1 || missing+=(clang)
command -v wasm-ld >/dev/null 2>&1 || missing+=(lld)
[[ -f /usr/include/wasm32-wasi/stdlib.h && -f /usr/lib/wasm32-wasi/crt1-reactor.o ]] || missing+=(wasi-libc)
compgen -G "/usr/lib/llvm-*/lib/clang/*/lib/wasi/libclang_rt.builtins-wasm32.a" >/dev/null \
    || missing+=(libclang-rt-dev-wasm32)
command -v "$WAT2WASM" >/dev/null 2>&1 || missing+=(wabt)
[[ -x "$RUSTC" ]] || missing+=(rustc)
[[ -d /usr/lib/rustlib/wasm32-wasi/lib ]] || missing+=(libstd-rust-dev-wasm32)

if (( ${#missing[@]} )); then
    echo "build.sh: installing Debian packages: ${missing[*]}" >&2
    [[ $(id -u) -eq 0 ]] || die "missing packages (${missing[*]}) and not root: apt-get install -y ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing packages (${missing[*]}) and no apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >/dev/null || die "apt-get install ${missing[*]} failed"
fi
command -v wasm-ld >/dev/null 2>&1 || die "wasm-ld not found after installing lld"

# --- build ------------------------------------------------------------------------
CFLAGS=(--target=wasm32-wasi -mexec-model=reactor -O2 -mbulk-memory -msimd128 -std=c11
        -Wall -Wextra -Werror -I"$here/include")
RUSTFLAGS=(--edition 2021 --target wasm32-wasi --crate-type cdylib -O -C strip=symbols)

mkdir -p "$out"
built=0 uptodate=0 failed=()
start=$(date +%s.%N)

# up_to_date OUTPUT INPUT...: the output exists and is newer than every input
up_to_date() {
    local o="$1"; shift
    (( force )) && return 1
    [[ -f "$o" ]] || return 1
    local i; for i in "$@"; do [[ "$o" -nt "$i" ]] || return 1; done
}

build_one() { # SOURCE
    local src="$1" name ext dst tmp
    name="$(basename "$src")"; ext="${name##*.}"; name="${name%.*}"
    dst="$out/$name.wasm"
    local deps=("$src" "${BASH_SOURCE[0]}")
    [[ "$ext" == c ]] && deps+=("$here/include/spillway_plugin.h" "$here/examples/json_scan.h")
    if up_to_date "$dst" "${deps[@]}"; then uptodate=$((uptodate + 1)); return; fi
    tmp="$dst.tmp.$$"
    local ok=1
    case "$ext" in
        c)   "$CLANG" "${CFLAGS[@]}" -I"$(dirname "$src")" -o "$tmp" "$src" || ok=0 ;;
        rs)  "$RUSTC" "${RUSTFLAGS[@]}" -o "$tmp" "$src" || ok=0 ;;
        wat) "$WAT2WASM" -o "$tmp" "$src" || ok=0 ;;
        *)   ok=0 ;;
    esac
    if (( ok )); then
        mv -f "$tmp" "$dst"; built=$((built + 1)); echo "  built $name.wasm"
    else
        rm -f "$tmp"; failed+=("$src")
    fi
}

shopt -s nullglob
sources=("$here"/examples/*.{c,rs,wat} "$here"/hostile/*.{c,rs,wat})
(( ${#sources[@]} )) || die "no plugin sources found under $here"
# Two sources with one name would silently overwrite each other's .wasm.
dups=$(for s in "${sources[@]}"; do b=${s##*/}; echo "${b%.*}"; done | sort | uniq -d)
[[ -z "$dups" ]] || die "two plugin sources share a name: $dups"
for src in "${sources[@]}"; do
    build_one "$src"
done


elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.2f", e - s }')
if (( ${#failed[@]} )); then
    die "failed to build: ${failed[*]#$here/} (${built} built, ${uptodate} up to date)"
fi
echo "build.sh: ${built} built, ${uptodate} up to date in ${elapsed}s -> ${out#$PWD/}"

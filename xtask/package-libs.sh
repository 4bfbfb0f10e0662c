#!/usr/bin/env bash
# Packages every library crate under crates/ with `cargo package`, WITH
# verification (each .crate is unpacked and built on its own, as a
# dependent project would build it), in dependency order.
#
# Why one crate at a time: the workspace has `publish = false`, and
# `cargo package -p a -p b` adds only publishable packages to its local
# overlay registry, so a crate whose dependency is another (unpublished)
# workspace crate finds nothing on crates.io. Instead, each crate that has
# been packaged and verified is unpacked, and the next crates see it as
# `[patch.crates-io]` (given with `--config`, so no manifest changes): a
# dependent is built against the packaged contents of its dependencies,
# never against the source tree. This runs in a scratch copy of the work
# tree (see below), so it changes nothing in it but target/.
#
# Verification builds each crate with its default features, as a dependent
# gets it; the workspace's own builds unify features (vigil-server's `cli`
# is always on there), so this is the one place that default builds are
# checked. Pass `--all-features` to verify the optional ones instead.
#
# Usage: xtask/package-libs.sh [extra `cargo package` flags]
#   CARGO_TARGET_DIR  where to build (default: target/package-check, apart
#                     from target/ so it does not take the main build's lock)
# The .crate files end up in $CARGO_TARGET_DIR/package/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

# Dependency order (a crate after everything it depends on, dev-dependencies
# with a version included: vigil-server's tests use vigil-client).
order=(
    vigil-proto
    vigil-auth
    vigil-command
    vigil-module-sdk
    vigil-modules
    vigil-failsafe
    vigil-log
    vigil-ws
    vigil-cluster
    vigil-audit
    vigil-client
    vigil-server
)
for dir in crates/*/; do
    name=$(basename "$dir")
    [[ " ${order[*]} " == *" $name "* ]] || {
        echo "package-libs.sh: $name is not in the packaging order" >&2
        exit 1
    }
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target/package-check}"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# Package from a copy of the work tree (tracked and untracked files, not the
# ignored ones): with the patches below, cargo notes them in Cargo.lock as
# `[[patch.unused]]` (the workspace itself uses path dependencies), and the
# real Cargo.lock must stay as it is for `--locked` builds running meanwhile.
mkdir "$scratch/ws" "$scratch/unpacked"
git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do if [[ -e $f ]]; then printf '%s\0' "$f"; fi; done |
    tar --null -T - -cf - | tar -xf - -C "$scratch/ws"
cd "$scratch/ws"

# `--locked` on the first crate only: it checks the copied Cargo.lock, which
# the patches then change.
locked=(--locked)
patches=()
for name in "${order[@]}"; do
    id=$(cargo pkgid -p "$name")
    version=${id##*[#@]}
    cargo package -p "$name" "${locked[@]}" "${patches[@]}" "$@"
    locked=()
    tar -xzf "$CARGO_TARGET_DIR/package/$name-$version.crate" -C "$scratch/unpacked"
    patches+=(--config "patch.crates-io.$name.path=\"$scratch/unpacked/$name-$version\"")
done
echo "package-libs.sh: ${#order[@]} crates packaged and verified; the .crate files are in $CARGO_TARGET_DIR/package"

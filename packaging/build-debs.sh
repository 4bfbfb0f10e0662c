#!/usr/bin/env bash
# Builds the Debian packages vigil-server and vigil-client into
# target/debian/, from release binaries. Needs cargo-deb (installed with
# `cargo install cargo-deb --version 3.8.0 --locked` when missing) and dpkg-dev's
# dpkg-shlibdeps (for the library dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deb --version >/dev/null 2>&1; then
    echo "cargo-deb is missing: installing it (cargo install cargo-deb --version 3.8.0 --locked)" >&2
    cargo install cargo-deb --version 3.8.0 --locked
fi
profile="${VIGIL_DEB_PROFILE:-release}"
cargo build --locked --profile "$profile" \
    -p vigil-server-bin -p vigil-client-bin -p vigilctl -p vigil-modules --bins
for package in vigil-server-bin vigil-client-bin; do
    cargo deb --locked --no-build --profile "$profile" -p "$package" "$@"
done
ls -1 target/debian/*.deb

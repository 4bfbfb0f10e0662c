# vigil tasks. `just --list` shows them all.

# The whole test suite (the same command as CI and the README).
test:
    cargo test --workspace --locked

# vigil's main job: a server, a client and pinned mTLS on loopback.
demo:
    cargo run --release --bin vigilctl -- demo

# Formatting and lints as CI wants them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Identities and configs for a manual run, in ./local (not committed).
init dir="local":
    cargo run --bin vigilctl -- init {{dir}}

# Run the server from `just init` (then `just client` in another terminal).
server dir="local":
    cargo run --bin vigil-server -- --config {{dir}}/server.toml

# Run the client from `just init`.
client dir="local":
    cargo run --bin vigil-client -- --config {{dir}}/client.toml

# Each module is written under a temporary name and renamed into place, so
# a watching server never sees half a file.
# Build the example modules (release) and deploy them into a mods directory.
mods dir="mods":
    #!/usr/bin/env bash
    set -euo pipefail
    mkdir -p "{{dir}}"
    for m in hello uname; do
        cargo build --release -p "$m"
        tmp="{{dir}}/.$m.so.tmp"
        cp "target/release/lib$m.so" "$tmp"
        sync "$tmp"
        mv "$tmp" "{{dir}}/$m.so"
        echo "deployed {{dir}}/$m.so  sha256 $(sha256sum "{{dir}}/$m.so" | cut -d' ' -f1)"
    done

# Load test: 10,000 simulated mTLS clients against a real vigil-server
# process (see docs/benchmarks.md, "Scale"). Takes about a minute here.
bench *args:
    cargo build --release -p vigil-bench -p vigil-server-bin
    cargo run --release -p vigil-bench -- --json bench.json {{args}}

# The same scenarios with 1,000 clients and shorter windows: about a minute.
bench-quick *args:
    cargo build --release -p vigil-bench -p vigil-server-bin
    cargo run --release -p vigil-bench -- --quick --json bench-quick.json {{args}}

# Fuzz one target, or every one in turn, for SECONDS each (libFuzzer via
# cargo-fuzz, installed if missing). New inputs go to fuzz/work/; findings
# to fuzz/artifacts/. See docs/reliability.md.
fuzz target="all" seconds="600":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
    cd fuzz
    targets="{{target}}"
    if [ "$targets" = all ]; then
        targets=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^vigil-fuzz$')
    fi
    for t in $targets; do
        mkdir -p "work/$t"
        cargo fuzz run --sanitizer none "$t" "work/$t" "corpus/$t" -- \
            -max_total_time={{seconds}} -max_len=65536 -timeout=10 -print_final_stats=1
    done

# External checkers (docs/reliability.md): schemathesis against the REST
# API's OpenAPI description, openssl s_client against the mTLS port.
check-external:
    xtask/external-checks.sh

# Package every library crate with `cargo package`, verification included,
# in dependency order (in a scratch copy; .crate files land in
# target/package-check/package). See xtask/package-libs.sh.
package:
    xtask/package-libs.sh

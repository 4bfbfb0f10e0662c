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

# Run the server and the client from `just init` in two terminals.
server dir="local":
    cargo run --bin vigil-server -- --config {{dir}}/server.toml

client dir="local":
    cargo run --bin vigil-client -- --config {{dir}}/client.toml

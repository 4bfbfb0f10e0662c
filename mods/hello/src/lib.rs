//! `hello`: greets its argument, like VeriPy's `hello.py`.
//!
//! Build and deploy with `just mods` (or `cargo build --release -p hello`
//! and copy `target/release/libhello.so` into the server's mods directory
//! as `hello.so`, writing a temporary name and renaming it into place).
//! Built with `--features formal` it greets formally instead, which shows a
//! module being replaced while clients are connected.

#![deny(missing_docs)]

fn greet(args: &str) -> Result<String, String> {
    let name = args.trim();
    if name.is_empty() {
        return Ok("You didn't tell me who to greet!".to_owned());
    }
    if cfg!(feature = "formal") {
        Ok(format!("Good day to you, {name}."))
    } else {
        Ok(format!("Hello, {name}!"))
    }
}

vigil_module_sdk::export_module! {
    name: "hello",
    description: "A simple module that says hello to a name.",
    execute: greet,
}

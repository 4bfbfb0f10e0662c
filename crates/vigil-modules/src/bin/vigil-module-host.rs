//! `vigil-module-host`: runs one module version for `vigil-server`, in a
//! sandbox, on the socket that is its standard input. Started by the
//! server; not meant to be run by hand.

fn main() -> std::process::ExitCode {
    vigil_modules::host::serve()
}

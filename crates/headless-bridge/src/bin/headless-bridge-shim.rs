//! `headless-bridge-shim [--tty] [--run-as UID:GID] [--] CLI [ARGS...]`: the run shim as an
//! executable of its own, so that starting it for every run costs as little as possible (see
//! the `run_shim` crate). `headless-bridge shim` does the same from the bridge's own binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    match run_shim::Invocation::parse(std::env::args_os().skip(1)) {
        Ok(invocation) => {
            let code = run_shim::main(invocation.program, invocation.args, invocation.options);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            eprintln!("headless-bridge-shim: {e}");
            eprintln!("usage: headless-bridge-shim [--tty] [--run-as UID:GID] [--] CLI [ARGS...]");
            ExitCode::from(2)
        }
    }
}

//! {name}: a command component for Shoal: it runs to its end, as a job or under
//! `shoal run`.
//!
//! `shoal build` makes target/wasm32-wasip2/release/{crate}.wasm; `shoal run` on that file
//! runs it (arguments after `--`); `shoal push` sends it to a registry.

use std::process::ExitCode;

fn main() -> ExitCode {
    // `spec.config` on a lattice, `--config GREETING=…` under `shoal run`.
    let greeting = shoal_sdk::config::get("GREETING").unwrap_or_else(|| "hello".to_owned());
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("{greeting} from {name}, arguments {args:?}");
    ExitCode::SUCCESS
}

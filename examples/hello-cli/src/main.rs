//! A command component: `shoal run hello-cli.wasm -- [--read PATH] [--sleep MS] [--exit CODE] [ARGS…]`.
//!
//! Prints a greeting, its arguments and its environment (empty unless granted with --env),
//! optionally tries to read a file (which fails unless its directory was granted with --dir),
//! sleeps as long as asked (a job that takes a while), and exits with the code asked for.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    println!("hello from Shoal");
    println!("args: {args:?}");
    let env: Vec<String> = std::env::vars()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    println!("env: {env:?}");
    let mut code = 0u8;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--read" => {
                let path = rest.next().map(String::as_str).unwrap_or("/");
                match std::fs::read_to_string(path) {
                    Ok(text) => println!("read {path}: {}", text.trim_end()),
                    Err(error) => println!("cannot read {path}: {error}"),
                }
            }
            "--sleep" => {
                let millis = rest.next().and_then(|ms| ms.parse().ok()).unwrap_or(0);
                std::thread::sleep(std::time::Duration::from_millis(millis));
            }
            "--exit" => code = rest.next().and_then(|code| code.parse().ok()).unwrap_or(1),
            _ => {}
        }
    }
    eprintln!("done");
    ExitCode::from(code)
}

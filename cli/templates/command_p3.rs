//! {name}: a WASI 0.3 command component for Shoal (it exports `wasi:cli/run@0.3.0`), written
//! with the `wasip3` bindings from crates.io: it runs to its end, as a job or under
//! `shoal run`.
//!
//! `shoal build` makes target/wasm32-wasip2/release/{crate}.wasm; `shoal run` on that file
//! runs it (arguments after `--`); `shoal push` sends it to a registry.

struct Command;

impl wasip3::exports::cli::run::Guest for Command {
    async fn run() -> Result<(), ()> {
        // `spec.env` on a lattice, `--env GREETING=…` under `shoal run`.
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_owned());
        let args: Vec<String> = std::env::args().skip(1).collect();
        println!("{greeting} from {name}, arguments {args:?}");
        Ok(())
    }
}

wasip3::cli::command::export!(Command);

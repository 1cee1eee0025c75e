//! Tells `shoal version` which wasmtime it embeds, read from the workspace's Cargo.lock.

fn main() {
    let lock = std::fs::read_to_string("../Cargo.lock").unwrap_or_default();
    let mut lines = lock.lines();
    let mut version = "unknown".to_owned();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\"" {
            if let Some(next) = lines.next() {
                version = next
                    .trim_start_matches("version = ")
                    .trim_matches('"')
                    .to_owned();
            }
            break;
        }
    }
    println!("cargo:rustc-env=SHOAL_WASMTIME_VERSION={version}");
    println!("cargo:rerun-if-changed=../Cargo.lock");
}

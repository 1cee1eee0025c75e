//! `shoal new`: writes a Rust component project that builds as it stands, from a template
//! (an HTTP handler or a command), with Shoal's guest SDK vendored beside it so the project
//! needs nothing but crates.io.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

/// Make a new component project: Cargo.toml, source, the guest SDK, build settings.
///
/// The project builds for wasm32-wasip2 with `shoal build` (or plain `cargo build`, which
/// its .cargo/config.toml points at that target). The SDK is copied into vendor/shoal-sdk,
/// so the project stands on its own.
///
/// With `--wasi 0.3` the project is a WASI 0.3 component written with the `wasip3` crate
/// from crates.io (an async handler; no vendored SDK).
///
/// Examples: shoal new hello
///           shoal new nightly-report --template command
///           shoal new api --dir ~/src/api
///           shoal new hello3 --wasi 0.3
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's name: the crate, the component file and a good app name. Lowercase
    /// letters, digits and '-', starting with a letter, at most 63 characters.
    pub name: String,

    /// What the component is.
    #[arg(long, value_enum, default_value_t = Template::Http)]
    pub template: Template,

    /// Where to write the project (default: ./NAME). It must not exist, or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,

    /// The WASI version the component is built for: 0.2 (Shoal's guest SDK, vendored) or
    /// 0.3 (the `wasip3` crate: async handlers, streams).
    #[arg(long, default_value = "0.2", value_parser = ["0.2", "0.3"])]
    pub wasi: String,
}

/// A project template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// A wasi:http handler (world wasi:http/proxy): an app with routes.
    Http,
    /// A program that runs to its end (world wasi:cli/command): a job, or `shoal run`.
    Command,
}

impl Template {
    /// The name `shoal build` reads back from `[package.metadata.shoal] world`.
    pub fn world(self) -> &'static str {
        match self {
            Template::Http => "http",
            Template::Command => "command",
        }
    }
}

/// The guest SDK's sources, copied into each project.
const SDK_FILES: [(&str, &str); 5] = [
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    ("src/http.rs", include_str!("../../../sdk/src/http.rs")),
    ("src/config.rs", include_str!("../../../sdk/src/config.rs")),
    ("wit/world.wit", include_str!("../../../sdk/wit/world.wit")),
    (
        "wit/deps/config/store.wit",
        include_str!("../../../sdk/wit/deps/config/store.wit"),
    ),
];

/// The versions Shoal's own components are built and tested with: cargo starts from these
/// and drops what the project does not use.
const LOCKFILE: &str = include_str!("../../../examples/Cargo.lock");

const HTTP_SOURCE: &str = include_str!("../../templates/http.rs");
const COMMAND_SOURCE: &str = include_str!("../../templates/command.rs");
const HTTP_P3_SOURCE: &str = include_str!("../../templates/http_p3.rs");
const COMMAND_P3_SOURCE: &str = include_str!("../../templates/command_p3.rs");

/// The `wasip3` release a WASI 0.3 project starts from: WASI 0.3.0, what Shoal's wasmtime
/// runs (0.10 is 0.3.2).
const WASIP3: &str = "0.9";

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    check_name(&args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if dir.exists()
        && std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: choose another name, or --dir",
            dir.display()
        );
    }
    let wasi_03 = args.wasi == "0.3";
    for (path, contents) in files(&args.name, args.template, wasi_03) {
        write(&dir.join(path), &contents)?;
    }
    let wasm = format!(
        "target/wasm32-wasip2/release/{}.wasm",
        args.name.replace('-', "_")
    );
    println!(
        "created {} ({} component, world {})",
        dir.display(),
        args.template.world(),
        match (args.template, wasi_03) {
            (Template::Http, false) => "wasi:http/proxy@0.2",
            (Template::Http, true) => "wasi:http/service@0.3",
            (Template::Command, false) => "wasi:cli/command@0.2",
            (Template::Command, true) => "wasi:cli/command@0.3",
        }
    );
    println!("next:");
    println!("  shoal build {}", dir.display());
    match args.template {
        Template::Http => println!(
            "  shoal run {}   # serves http://127.0.0.1:8080",
            dir.join(&wasm).display()
        ),
        Template::Command => println!("  shoal run {} -- ARGS", dir.join(&wasm).display()),
    }
    println!(
        "  shoal push {} REGISTRY/{}:0.1.0",
        dir.join(&wasm).display(),
        args.name
    );
    Ok(())
}

/// Names are crate names and app names at once.
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        bail!(
            "{name:?} cannot name a project: use lowercase letters, digits and '-', starting with a letter (at most 63), for example hello-api"
        );
    }
    Ok(())
}

/// Every file of a new project, by path inside it.
fn files(name: &str, template: Template, wasi_03: bool) -> Vec<(PathBuf, String)> {
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| text.replace("{name}", name).replace("{crate}", &crate_name);
    let cdylib = "\n[lib]\ncrate-type = [\"cdylib\"]\n";
    // A WASI 0.3 command exports wasi:cli/run@0.3 from a library; a 0.2 one is a program
    // whose main the toolchain exports as wasi:cli/run@0.2.
    let (source_path, source, lib) = match (template, wasi_03) {
        (Template::Http, false) => ("src/lib.rs", HTTP_SOURCE, cdylib),
        (Template::Command, false) => ("src/main.rs", COMMAND_SOURCE, ""),
        (Template::Http, true) => ("src/lib.rs", HTTP_P3_SOURCE, cdylib),
        (Template::Command, true) => ("src/lib.rs", COMMAND_P3_SOURCE, cdylib),
    };
    let (dependency, wasi) = match (template, wasi_03) {
        (_, false) => (
            "shoal-sdk = { path = \"vendor/shoal-sdk\" }".to_owned(),
            "wasi = \"0.2\"\n".to_owned(),
        ),
        (Template::Http, true) => (
            format!("wasip3 = {{ version = \"{WASIP3}\", features = [\"async-spawn\"] }}"),
            "wasi = \"0.3\"\n".to_owned(),
        ),
        (Template::Command, true) => (
            format!("wasip3 = \"{WASIP3}\""),
            "wasi = \"0.3\"\n".to_owned(),
        ),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false
{lib}
[dependencies]
{dependency}

# What `shoal build` checks the component against: "http" (wasi:http/proxy, or
# wasi:http/service in WASI 0.3) or "command" (wasi:cli/command), and the WASI version.
[package.metadata.shoal]
world = "{world}"
{wasi}
# Small components: they are pulled by every host that runs them.
[profile.release]
opt-level = "s"
debug = false
strip = true
lto = true
codegen-units = 1

# A project of its own, even inside another workspace.
[workspace]
"#,
        world = template.world(),
    );
    let sdk_manifest = r#"[package]
name = "shoal-sdk"
version = "0.1.0"
edition = "2024"
description = "Shoal's guest side, copied here by `shoal new`"
license = "Apache-2.0"
publish = false

[dependencies]
wasi = "0.14"
wit-bindgen = "0.57"
"#;
    let mut files = vec![
        (PathBuf::from("Cargo.toml"), manifest),
        (PathBuf::from("Cargo.lock"), LOCKFILE.to_owned()),
        (PathBuf::from(source_path), fill(source)),
        (
            PathBuf::from(".cargo/config.toml"),
            "[build]\ntarget = \"wasm32-wasip2\"\n".to_owned(),
        ),
        (PathBuf::from(".gitignore"), "/target\n".to_owned()),
        (
            PathBuf::from("vendor/shoal-sdk/Cargo.toml"),
            sdk_manifest.to_owned(),
        ),
    ];
    if wasi_03 {
        files.retain(|(path, _)| !path.starts_with("vendor"));
        return files;
    }
    for (path, contents) in SDK_FILES {
        files.push((
            Path::new("vendor/shoal-sdk").join(path),
            contents.to_owned(),
        ));
    }
    files
}

fn write(path: &Path, contents: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_crate_and_app_names() {
        for good in ["hello", "hello-api", "a1"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Hello",
            "1app",
            "hello_api",
            "app-",
            "a b",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn templates_name_the_project_and_its_world() {
        let files = files("hello-api", Template::Http, false);
        let manifest = &files[0].1;
        assert!(manifest.contains("name = \"hello-api\""));
        assert!(manifest.contains("world = \"http\""));
        assert!(manifest.contains("crate-type = [\"cdylib\"]"));
        let source = &files
            .iter()
            .find(|(path, _)| path.ends_with("lib.rs"))
            .unwrap()
            .1;
        assert!(source.contains("from hello-api at {path}"));
        assert!(source.contains("hello_api.wasm"));
        let command = super::files("job", Template::Command, false);
        assert!(
            command
                .iter()
                .any(|(path, _)| path.ends_with("src/main.rs"))
        );
        // WASI 0.3: the wasip3 crate, no vendored SDK, the version in the metadata.
        for template in [Template::Http, Template::Command] {
            let files = super::files("hello3", template, true);
            let manifest = &files[0].1;
            assert!(manifest.contains("wasip3 = "), "{manifest}");
            assert!(manifest.contains("wasi = \"0.3\""), "{manifest}");
            assert!(manifest.contains("crate-type = [\"cdylib\"]"), "{manifest}");
            assert!(files.iter().all(|(path, _)| !path.starts_with("vendor")));
        }
    }
}

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
/// Examples: shoal new hello
///           shoal new nightly-report --template command
///           shoal new api --dir ~/src/api
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
    for (path, contents) in files(&args.name, args.template) {
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
        match args.template {
            Template::Http => "wasi:http/proxy",
            Template::Command => "wasi:cli/command",
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
fn files(name: &str, template: Template) -> Vec<(PathBuf, String)> {
    let crate_name = name.replace('-', "_");
    let fill = |text: &str| text.replace("{name}", name).replace("{crate}", &crate_name);
    let (source_path, source, lib) = match template {
        Template::Http => (
            "src/lib.rs",
            HTTP_SOURCE,
            "\n[lib]\ncrate-type = [\"cdylib\"]\n",
        ),
        Template::Command => ("src/main.rs", COMMAND_SOURCE, ""),
    };
    let manifest = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false
{lib}
[dependencies]
shoal-sdk = {{ path = "vendor/shoal-sdk" }}

# What `shoal build` checks the component against: "http" (wasi:http/proxy) or "command"
# (wasi:cli/command).
[package.metadata.shoal]
world = "{world}"

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
        let files = files("hello-api", Template::Http);
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
        let command = super::files("job", Template::Command);
        assert!(
            command
                .iter()
                .any(|(path, _)| path.ends_with("src/main.rs"))
        );
    }
}

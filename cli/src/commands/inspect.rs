//! `shoal inspect`: what an artifact or component file is, imports, exports and all.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use serde::Serialize;
use shoal_oci::artifact::Blob;
use shoal_oci::{ComponentInfo, Digest, media_types};

use crate::output::{self, Format};
use crate::registry::{RegistryArgs, looks_like_a_file};

/// Show what a component is: digest, size, media types, annotations, world, imports, exports.
///
/// TARGET is a registry reference (pulled into the cache if needed) or a local .wasm file.
///
/// Examples: shoal inspect localhost:5000/team/hello:1.0
///           shoal inspect ./hello.wasm -o json
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// A reference (registry/repository:tag, …@sha256:…) or a path to a .wasm file.
    pub target: String,

    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// What `inspect` reports, for people and for `-o json|yaml`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    /// The reference inspected, for an artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    /// The file inspected, for a local component.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<PathBuf>,
    /// Manifest digest for an artifact, content digest for a file.
    digest: Digest,
    /// Total bytes: manifest, config and layer for an artifact; the file for a file.
    size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Blob>,
    layer: Blob,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    os: Option<String>,
    component: ComponentInfo,
}

pub async fn run(args: InspectArgs) -> anyhow::Result<()> {
    let report = if looks_like_a_file(&args.target) {
        inspect_file(Path::new(&args.target))?
    } else {
        inspect_reference(&args).await?
    };
    output::print(args.output, &report, render)
}

fn inspect_file(path: &Path) -> anyhow::Result<Report> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let component =
        ComponentInfo::from_bytes(&bytes).with_context(|| format!("{}", path.display()))?;
    let digest = Digest::of(&bytes);
    Ok(Report {
        reference: None,
        file: Some(path.to_owned()),
        digest: digest.clone(),
        size: bytes.len() as u64,
        media_type: None,
        config: None,
        layer: Blob {
            media_type: media_types::WASM_LAYER.to_owned(),
            digest,
            size: bytes.len() as u64,
        },
        annotations: BTreeMap::new(),
        os: None,
        component,
    })
}

async fn inspect_reference(args: &InspectArgs) -> anyhow::Result<Report> {
    let (pulled, bytes) = args.registry.pull_component(&args.target).await?;
    // The binary is the authority on what the component imports and exports; the config only
    // repeats it, and an artifact built by another tool may not carry it at all.
    let component = ComponentInfo::from_bytes(&bytes)
        .with_context(|| format!("the layer of {} is not a valid component", args.target))?;
    Ok(Report {
        reference: Some(pulled.reference.clone()),
        file: None,
        digest: pulled.digest.clone(),
        size: pulled.manifest_size + pulled.manifest.config.size + pulled.manifest.layer.size,
        media_type: Some(
            pulled
                .manifest
                .manifest
                .media_type
                .clone()
                .unwrap_or_else(|| media_types::OCI_MANIFEST.to_owned()),
        ),
        annotations: pulled.manifest.annotations(),
        config: Some(pulled.manifest.config.clone()),
        layer: pulled.manifest.layer.clone(),
        os: Some(pulled.config.os.clone()),
        component,
    })
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: &dyn std::fmt::Display| {
        let _ = writeln!(out, "{key:<13}{value}");
    };
    if let Some(reference) = &report.reference {
        line("Reference:", reference);
    }
    if let Some(file) = &report.file {
        line("File:", &file.display());
    }
    line("Digest:", &report.digest);
    line("Size:", &output::size(report.size));
    if let Some(media_type) = &report.media_type {
        line("Media type:", media_type);
    }
    if let Some(config) = &report.config {
        line(
            "Config:",
            &format!(
                "{} {} ({})",
                config.media_type,
                config.digest,
                output::size(config.size)
            ),
        );
    }
    let layer = &report.layer;
    line(
        "Layer:",
        &format!(
            "{} {} ({})",
            layer.media_type,
            layer.digest,
            output::size(layer.size)
        ),
    );
    if let Some(os) = &report.os {
        line("OS:", os);
    }
    line(
        "World:",
        &report
            .component
            .target
            .as_deref()
            .unwrap_or("(not a WASI world Shoal recognises)"),
    );
    let mut list = |title: &str, items: &[String]| {
        let _ = writeln!(out, "{title} ({}):", items.len());
        for item in items {
            let _ = writeln!(out, "  {item}");
        }
    };
    list("Imports", &report.component.imports);
    list("Exports", &report.component.exports);
    if !report.annotations.is_empty() {
        let _ = writeln!(out, "Annotations:");
        for (key, value) in &report.annotations {
            let _ = writeln!(out, "  {key}={value}");
        }
    }
    out
}

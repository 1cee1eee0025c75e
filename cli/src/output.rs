//! Output formats: readable text for people, JSON or YAML for scripts.

use clap::ValueEnum;
use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Text,
    /// JSON, one document.
    Json,
    /// YAML, one document.
    Yaml,
}

/// Prints `value` as JSON or YAML; `text` renders it for people.
pub fn print<T: Serialize>(
    format: Format,
    value: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let rendered = match format {
        Format::Text => text(value),
        Format::Json => serde_json::to_string_pretty(value)? + "\n",
        Format::Yaml => serde_saphyr::to_string(value)?,
    };
    print!("{rendered}");
    Ok(())
}

/// A human size: `47.7 KiB`.
pub fn size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

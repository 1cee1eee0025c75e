//! Reading a Wasm component binary: is it a valid component, and what does it import and export.
//!
//! Push refuses anything that is not a valid component with an error that names the problem
//! (not Wasm at all, a core module, truncated, invalid), and records the component's top-level
//! imports and exports and its target world in the artifact config.

use serde::{Deserialize, Serialize};
use wasmparser::{Chunk, Encoding, Parser, Payload, Validator, WasmFeatures};

/// The first four bytes of every Wasm binary, core module or component.
const WASM_MAGIC: &[u8; 4] = b"\0asm";

/// Why a file is not a component Shoal can ship.
#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    /// Missing the `\0asm` magic: some other file.
    #[error(
        "not a WebAssembly binary (it does not start with the \\0asm magic bytes); build the component with `cargo build --target wasm32-wasip2`"
    )]
    NotWasm,
    /// A core module (the wasm32-unknown-unknown or wasip1 kind), not a component.
    #[error(
        "a core WebAssembly module, not a component; build for wasm32-wasip2 or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    /// The binary ends in the middle of a section.
    #[error(
        "truncated: the binary ends at byte {len} in the middle of a section (incomplete download or copy?)"
    )]
    Truncated {
        /// Length of the binary that was read.
        len: usize,
    },
    /// Well-formed framing but the component does not validate.
    #[error("not a valid component: {message} (at byte offset {offset})")]
    Invalid {
        /// The validator's explanation.
        message: String,
        /// Where in the binary the problem is.
        offset: usize,
    },
}

/// What a component says about itself: what it needs from a host and what it offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ComponentInfo {
    /// Top-level imports, for example `wasi:io/streams@0.2.4`.
    pub imports: Vec<String>,
    /// Top-level exports, for example `wasi:http/incoming-handler@0.2.4`.
    pub exports: Vec<String>,
    /// The world the component targets, inferred from what it exports
    /// (`wasi:http/proxy@…` for an HTTP handler, `wasi:cli/command@…` for a command);
    /// `None` when the exports match neither.
    pub target: Option<String>,
}

impl ComponentInfo {
    /// The WASI version of the world it targets, `major.minor` (`0.2`, `0.3`), when it
    /// targets one Shoal recognises.
    pub fn wasi_version(&self) -> Option<String> {
        let (_, version) = self.target.as_deref()?.rsplit_once('@')?;
        let mut parts = version.split('.');
        Some(format!("{}.{}", parts.next()?, parts.next()?))
    }

    /// Validates `bytes` as a Wasm component and reads its imports, exports and target world.
    ///
    /// # Errors
    /// [`ComponentError`] names why the bytes are not a valid component.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ComponentError> {
        if bytes.len() < WASM_MAGIC.len() || &bytes[..WASM_MAGIC.len()] != WASM_MAGIC {
            return Err(ComponentError::NotWasm);
        }
        let info = read_top_level(bytes)?;
        Validator::new_with_features(WasmFeatures::all())
            .validate_all(bytes)
            .map_err(|error| ComponentError::Invalid {
                message: error.message().to_owned(),
                offset: error.offset(),
            })?;
        Ok(info)
    }
}

/// Walks the binary's framing (without validating) and collects the outermost component's
/// import and export names. Walking with `eof = false` until every byte is consumed lets the
/// parser say "need more data" instead of failing, which is how a truncated file shows itself.
fn read_top_level(bytes: &[u8]) -> Result<ComponentInfo, ComponentError> {
    let mut info = ComponentInfo::default();
    // Nesting depth: 0 is the outer component; nested modules and components open a level
    // and close it with their own `End` payload.
    let mut depth = 0usize;
    let mut offset = 0usize;
    let mut parser = Parser::new(0);
    // Parsers of the enclosing levels, restored when a nested level ends.
    let mut stack: Vec<Parser> = Vec::new();
    loop {
        // Only once every byte is consumed is the end of input the end of the component;
        // a nested component that is still open then is truncated as well.
        let at_end = offset == bytes.len();
        let (payload, consumed) = match parser.parse(&bytes[offset..], at_end) {
            Ok(Chunk::NeedMoreData(_)) => {
                return Err(ComponentError::Truncated { len: bytes.len() });
            }
            Ok(Chunk::Parsed { consumed, payload }) => (payload, consumed),
            Err(_) if at_end => return Err(ComponentError::Truncated { len: bytes.len() }),
            Err(error) => {
                return Err(ComponentError::Invalid {
                    message: error.message().to_owned(),
                    offset: error.offset(),
                });
            }
        };
        offset += consumed;
        match payload {
            Payload::Version { encoding, .. } if depth == 0 && encoding == Encoding::Module => {
                return Err(ComponentError::CoreModule);
            }
            Payload::ComponentImportSection(reader) if depth == 0 => {
                for import in reader {
                    let import = import.map_err(invalid)?;
                    info.imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(reader) if depth == 0 => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    info.exports.push(export.name.name.to_owned());
                }
            }
            Payload::ModuleSection { parser: nested, .. }
            | Payload::ComponentSection { parser: nested, .. } => {
                stack.push(std::mem::replace(&mut parser, nested));
                depth += 1;
            }
            Payload::End(_) => match stack.pop() {
                Some(outer) => {
                    parser = outer;
                    depth -= 1;
                }
                None => break,
            },
            _ => {}
        }
    }
    if offset < bytes.len() {
        return Err(ComponentError::Invalid {
            message: format!(
                "{} trailing bytes after the component",
                bytes.len() - offset
            ),
            offset,
        });
    }
    info.target = infer_target(&info.exports);
    Ok(info)
}

fn invalid(error: wasmparser::BinaryReaderError) -> ComponentError {
    ComponentError::Invalid {
        message: error.message().to_owned(),
        offset: error.offset(),
    }
}

/// A component binary does not carry the name of the world it was built for, only its imports
/// and exports; the WASI worlds Shoal runs are recognised by their export: an HTTP handler
/// (`wasi:http/proxy` in WASI 0.2, `wasi:http/service` in 0.3) or a command.
fn infer_target(exports: &[String]) -> Option<String> {
    const WORLDS: [(&str, &str); 3] = [
        ("wasi:http/incoming-handler@", "wasi:http/proxy@"),
        ("wasi:http/handler@", "wasi:http/service@"),
        ("wasi:cli/run@", "wasi:cli/command@"),
    ];
    // A message handler that serves no HTTP: wasi:messaging's `messaging-core` world, or
    // wasmCloud's messaging one.
    const MESSAGES: [(&str, &str); 2] = [
        (
            "wasi:messaging/incoming-handler@",
            "wasi:messaging/messaging-core@",
        ),
        (
            "wasmcloud:messaging/handler@",
            "wasmcloud:messaging/messaging@",
        ),
    ];
    let world = |export: &String, (interface, world): &(&str, &str)| {
        export
            .strip_prefix(interface)
            .map(|version| format!("{world}{version}"))
    };
    let find = |worlds: &[(&str, &str)]| {
        exports
            .iter()
            .find_map(|export| worlds.iter().find_map(|known| world(export, known)))
    };
    find(&WORLDS).or_else(|| find(&MESSAGES))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest valid component: magic, component version and layer, nothing else.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\x00\x01\x00";
    /// The smallest valid core module.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\x00\x00\x00";

    #[test]
    fn empty_component_is_valid_and_has_no_target() {
        let info = ComponentInfo::from_bytes(EMPTY_COMPONENT).unwrap();
        assert_eq!(info, ComponentInfo::default());
    }

    #[test]
    fn refuses_non_wasm_with_a_clear_cause() {
        let error = ComponentInfo::from_bytes(b"#!/bin/sh\necho hi\n").unwrap_err();
        assert!(matches!(error, ComponentError::NotWasm));
        assert!(error.to_string().contains("not a WebAssembly binary"));
    }

    #[test]
    fn refuses_core_modules() {
        let error = ComponentInfo::from_bytes(EMPTY_MODULE).unwrap_err();
        assert!(matches!(error, ComponentError::CoreModule), "{error}");
    }

    #[test]
    fn detects_truncation_inside_a_section() {
        // A custom section that announces 16 bytes but carries 3.
        let mut bytes = EMPTY_COMPONENT.to_vec();
        bytes.extend_from_slice(&[0x00, 16, 1, b'x', 0]);
        let error = ComponentInfo::from_bytes(&bytes).unwrap_err();
        assert!(matches!(error, ComponentError::Truncated { .. }), "{error}");
    }

    #[test]
    fn infers_worlds_from_exports() {
        // A message handler alone; with an HTTP handler, an HTTP app.
        let messages = ["wasi:messaging/incoming-handler@0.2.0-draft".to_owned()];
        assert_eq!(
            infer_target(&messages).as_deref(),
            Some("wasi:messaging/messaging-core@0.2.0-draft")
        );
        let both = [
            messages[0].clone(),
            "wasi:http/incoming-handler@0.2.4".to_owned(),
        ];
        assert_eq!(
            infer_target(&both).as_deref(),
            Some("wasi:http/proxy@0.2.4")
        );
        let http = ["wasi:http/incoming-handler@0.2.4".to_owned()];
        assert_eq!(
            infer_target(&http).as_deref(),
            Some("wasi:http/proxy@0.2.4")
        );
        let cli = ["wasi:cli/run@0.2.0".to_owned()];
        assert_eq!(
            infer_target(&cli).as_deref(),
            Some("wasi:cli/command@0.2.0")
        );
        let http = ["wasi:http/handler@0.3.0".to_owned()];
        assert_eq!(
            infer_target(&http).as_deref(),
            Some("wasi:http/service@0.3.0")
        );
        let cli = ["wasi:cli/run@0.3.0".to_owned()];
        assert_eq!(
            infer_target(&cli).as_deref(),
            Some("wasi:cli/command@0.3.0")
        );
        assert_eq!(infer_target(&["my:pkg/thing".to_owned()]), None);
        let info = |exports: &[&str]| ComponentInfo {
            target: infer_target(&exports.iter().map(|e| (*e).to_owned()).collect::<Vec<_>>()),
            ..ComponentInfo::default()
        };
        assert_eq!(
            info(&["wasi:http/handler@0.3.0"]).wasi_version().as_deref(),
            Some("0.3")
        );
        assert_eq!(
            info(&["wasi:cli/run@0.2.6"]).wasi_version().as_deref(),
            Some("0.2")
        );
        assert_eq!(info(&["my:pkg/thing"]).wasi_version(), None);
    }
}

//! What compiled code is for: a machine (target triple and CPU features, as Cranelift names
//! them), this machine as Cranelift finds it, the check that a machine a host reports is one
//! this build compiles for, and the compile key an engine's code is known by (so code made
//! elsewhere for the same key loads here, and code for another never does).

use std::hash::{Hash, Hasher};

use sha2::{Digest as _, Sha256};
use wasmtime::Engine;

use crate::error::HostError;

/// A machine compiled code is for: its target triple and Cranelift's CPU-feature settings.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetSettings {
    /// The target triple.
    pub triple: String,
    /// The CPU features (Cranelift's boolean ISA settings) enabled.
    pub isa_flags: Vec<String>,
}

/// This machine as its compiler sees it: the host triple and the CPU features Cranelift
/// finds (exactly what an engine without a target uses). `None` where Cranelift does not
/// support this machine, or describes it with more than features it has or lacks.
pub fn native_target() -> Option<TargetSettings> {
    /// Records the features Cranelift's detection enables; any other setting spoils it.
    #[derive(Default)]
    struct Recorder {
        enabled: Vec<String>,
        other: bool,
    }
    impl cranelift_codegen::settings::Configurable for Recorder {
        fn set(&mut self, _: &str, _: &str) -> cranelift_codegen::settings::SetResult<()> {
            self.other = true;
            Ok(())
        }
        fn enable(&mut self, name: &str) -> cranelift_codegen::settings::SetResult<()> {
            self.enabled.push(name.to_owned());
            Ok(())
        }
    }
    let mut recorder = Recorder::default();
    cranelift_native::infer_native_flags(&mut recorder).ok()?;
    (!recorder.other).then(|| TargetSettings {
        triple: target_lexicon::Triple::host().to_string(),
        isa_flags: recorder.enabled,
    })
}

/// Checks that `target` names a machine this build compiles for and that each of its flags
/// is a CPU feature (a boolean ISA setting) of that machine: no compiler setting (a host
/// could ask for slow or unchecked code), no preset.
pub(crate) fn check_target(target: &TargetSettings) -> Result<(), HostError> {
    use cranelift_codegen::settings::SettingKind;
    let refused =
        |why: String| HostError::Engine(format!("cannot compile for {:?}: {why}", target.triple));
    let triple: target_lexicon::Triple = target
        .triple
        .parse()
        .map_err(|error| refused(format!("{error}")))?;
    let isa = cranelift_codegen::isa::lookup(triple).map_err(|error| refused(error.to_string()))?;
    let features: std::collections::HashSet<&str> = isa
        .iter()
        .filter(|setting| setting.kind == SettingKind::Bool)
        .map(|setting| setting.name)
        .collect();
    match target
        .isa_flags
        .iter()
        .find(|flag| !features.contains(flag.as_str()))
    {
        Some(flag) => Err(refused(format!("{flag:?} is not one of its CPU features"))),
        None => Ok(()),
    }
}

/// Hex digits of a compile key kept (128 bits).
const COMPILE_KEY_LEN: usize = shoal_lattice::validate::COMPILE_KEY_LEN;

/// The compile key of `engine`: the sha256 of wasmtime's precompile compatibility hash
/// (target, CPU features, tunables, wasm features, wasmtime version), so it is the same in
/// every process whose engine makes the same code, on any 64-bit little-endian machine (the
/// hash writes integers as the machine holds them: elsewhere the key differs, which means a
/// miss, never wrong code).
pub fn compile_key(engine: &Engine) -> String {
    /// A `Hasher` that feeds sha256 (`finish` is not used).
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
        fn finish(&self) -> u64 {
            0
        }
    }
    let mut hasher = Sha(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut hasher);
    let mut key = hex::encode(hasher.0.finalize());
    key.truncate(COMPILE_KEY_LEN);
    key
}

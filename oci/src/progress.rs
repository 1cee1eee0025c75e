//! Progress reporting for blob transfers, so a CLI can draw bars while the library stays
//! terminal-agnostic.

/// Receives the progress of one blob transfer at a time.
pub trait Progress: Send + Sync {
    /// A transfer of `total` bytes starts; `label` says what it is ("push sha256:ab12…").
    fn begin(&self, label: &str, total: u64);
    /// `bytes` more bytes went through.
    fn advance(&self, bytes: u64);
    /// The transfer ended (whether or not it succeeded).
    fn end(&self);
}

/// Reports nothing: for servers and tests.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn begin(&self, _label: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn end(&self) {}
}

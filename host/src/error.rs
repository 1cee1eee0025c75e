//! Errors of loading and running components, and the causes a failed request is counted under.

use std::fmt;
use std::path::PathBuf;

/// Why the runtime could not load or start a component.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// wasmtime refused the engine configuration.
    #[error("cannot configure the wasmtime engine: {0}")]
    Engine(String),
    /// The component does not compile.
    #[error("cannot compile the component: {0}")]
    Compile(String),
    /// The component imports interfaces Shoal does not provide.
    #[error(
        "the component imports {} which Shoal does not provide; this host provides {}, and nothing else",
        missing.join(", "),
        provided.join(", ")
    )]
    UnsupportedImports {
        /// The imports no capability provides.
        missing: Vec<String>,
        /// What this host's engine provides, for people.
        provided: Vec<&'static str>,
    },
    /// The component exports no HTTP handler and no wasi:cli/run.
    #[error(
        "the component exports neither an HTTP handler (wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3) nor wasi:cli/run (a command); it exports: {}",
        if .0.is_empty() { "nothing".to_owned() } else { .0.join(", ") }
    )]
    NotRunnable(Vec<String>),
    /// Instantiation or linking failed for another reason.
    #[error("cannot instantiate the component: {0}")]
    Instantiate(String),
    /// A preopened directory is missing or unreadable.
    #[error("cannot grant directory {}: {reason}", path.display())]
    Dir {
        /// The host path.
        path: PathBuf,
        /// Why it cannot be granted.
        reason: String,
    },
    /// The compile cache failed (disk full, permissions).
    #[error("compile cache at {}: {reason}", path.display())]
    Cache {
        /// The file involved.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Why one request (or run) failed; each is logged and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCause {
    /// Past its wall-clock timeout: 504.
    Timeout,
    /// Tried to grow memory past its cap: 500.
    OutOfMemory,
    /// Overflowed its stack: 500.
    StackOverflow,
    /// Trapped (a panic is an `unreachable` trap): 500.
    Trap,
    /// Returned without setting a response: 500.
    NoResponse,
    /// The request body was larger than allowed: 413.
    BodyTooLarge,
    /// No concurrency slot and the queue was full: 503.
    Overloaded,
    /// Ran its whole fuel budget (`limits.fuel`): 508.
    OutOfFuel,
}

impl FailureCause {
    /// Every cause, for metrics.
    pub const ALL: [Self; 8] = [
        Self::Timeout,
        Self::OutOfMemory,
        Self::StackOverflow,
        Self::Trap,
        Self::NoResponse,
        Self::BodyTooLarge,
        Self::Overloaded,
        Self::OutOfFuel,
    ];

    /// A short name for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::OutOfMemory => "out_of_memory",
            Self::StackOverflow => "stack_overflow",
            Self::Trap => "trap",
            Self::NoResponse => "no_response",
            Self::BodyTooLarge => "body_too_large",
            Self::Overloaded => "overloaded",
            Self::OutOfFuel => "out_of_fuel",
        }
    }
}

impl fmt::Display for FailureCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Raised from the epoch callback when a request runs past its deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimedOut;

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the guest ran past its timeout")
    }
}

impl std::error::Error for TimedOut {}

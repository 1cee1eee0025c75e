//! The compile worker: a host compiles a component it has not compiled before in a child
//! process, which writes the compile cache entry the host then loads.
//!
//! Why a process and not a thread: compiling is the host's largest transient cost, and it
//! stays behind in a long-lived process. Cranelift's code (about 12 MiB of the binary's
//! pages) and its working memory (freed, but kept by the allocator) made a host that had
//! compiled one small app hold twice the memory of an idle one. In a child both go when it
//! exits. It also keeps a component that makes the compiler run out of memory from taking
//! the host (and every replica it serves) down with it: the child dies, the app fails to
//! start with that reason, and the host keeps serving.
//!
//! The protocol: the component's bytes on the child's stdin, a [`Request`] (the engine's
//! settings and the cache path to write; for another machine's code, its target and the
//! compile key the engine must have) as JSON in its last argument; exit 0 when the entry is
//! written, [`REFUSED`] with the compiler's message on stdout when the component does not
//! compile (or this build cannot make code of that key), [`UNAVAILABLE`] with a message when the worker could not do its job for a reason
//! of its own (then the host compiles itself). Anything else (a panic, a signal, the cap, the
//! deadline) fails the component: compiling it again in the host could take the host down.

use std::ffi::OsString;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::engine::{EngineSettings, store_compiled};

/// The worker's exit code when the component does not compile (its message on stdout).
pub const REFUSED: i32 = 2;

/// The worker's exit code when it could not do its job for a reason of its own, not the
/// component's (its message on stdout).
pub const UNAVAILABLE: i32 = 3;

/// The worker's exit code when it compiled the component but could not write the entry (its
/// message on stdout): the component fails to start rather than being compiled again in the
/// host, with no cap.
pub const NOT_STORED: i32 = 4;

/// The exit code of a program that could not be run at all (it never came from a worker).
const EXEC_FAILED: i32 = 127;

/// How long a compile may take before its worker is stopped, unless a worker says.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// The environment variables a worker is started with (the rest are not passed).
const PASSED_ENVIRONMENT: [&str; 4] = ["PATH", "TMPDIR", "LD_LIBRARY_PATH", "QEMU_LD_PREFIX"];

/// The longest message read back from a worker.
const MESSAGE_LIMIT: usize = 16 << 10;

/// How to start a compile worker: a program and its first arguments; the request follows.
#[derive(Debug, Clone)]
pub struct Worker {
    /// The program to run.
    pub program: PathBuf,
    /// Its arguments before the request.
    pub args: Vec<OsString>,
    /// The most memory (heap and private mappings) a compile may take; past it the worker
    /// dies and the component is refused, whatever else the device is doing.
    pub memory_limit: Option<u64>,
    /// How long a compile may take before the worker is stopped and the component refused.
    pub timeout: Duration,
}

/// What a worker is asked to do (besides reading the component from stdin).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Request {
    /// The engine to compile for: the asking runtime's.
    pub engine: EngineSettings,
    /// The compile cache entry to write.
    pub output: PathBuf,
    /// The worker's memory cap, in bytes ([`Worker::memory_limit`]).
    #[serde(default)]
    pub memory_limit: Option<u64>,
    /// The component's length: a worker that reads fewer bytes compiles nothing.
    pub size: u64,
    /// The compile key the engine must have (code for a host of another machine): a worker
    /// whose engine for `engine` has another compiles nothing, as the host would not load it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Why a worker did not write the entry.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The component does not compile: the compiler's message.
    #[error("{0}")]
    Refused(String),
    /// The worker was killed (by the kernel when out of memory, say) while compiling.
    #[error("{0}")]
    Died(String),
    /// No worker could be started or it failed for a reason of its own: compile here.
    #[error("{0}")]
    Unavailable(String),
}

impl Worker {
    /// The running executable with `args` before the request: `/proc/self/exe`, which still
    /// starts this same build after an upgrade replaced the file on disk. `None` where there
    /// is no such file (then the host compiles in its own process; a program found by name
    /// could be another version, or another program).
    pub fn this_executable(args: impl IntoIterator<Item = impl Into<OsString>>) -> Option<Self> {
        let program = PathBuf::from("/proc/self/exe");
        if !program.exists() {
            return None;
        }
        Some(Self {
            program,
            args: args.into_iter().map(Into::into).collect(),
            memory_limit: None,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Has a worker compile `component` for `engine` into the cache entry `output`. Blocks
    /// until the worker exits.
    ///
    /// # Errors
    /// [`WorkerError`]: refused, died, or unavailable (then the caller compiles itself).
    pub fn compile(
        &self,
        engine: &EngineSettings,
        component: &[u8],
        output: &Path,
    ) -> Result<(), WorkerError> {
        self.run(engine, None, component, output)
    }

    /// Has a worker compile `component` for a host whose record says `target`, and returns
    /// the compile cache entry (`<sha256><compiled>`) that host's runtime adopts
    /// ([`crate::engine::Runtime::adopt_compiled`]). Blocks until the worker exits.
    ///
    /// # Errors
    /// [`WorkerError`]; [`WorkerError::Unavailable`] also when the engine made for `target`
    /// has another key than the target's (this build cannot make that host's code).
    pub fn compile_for(
        &self,
        target: &shoal_lattice::records::CompileTarget,
        component: &[u8],
    ) -> Result<Vec<u8>, WorkerError> {
        let dir = tempfile::tempdir().map_err(|error| {
            WorkerError::Unavailable(format!("cannot make a directory to compile in: {error}"))
        })?;
        let output = dir.path().join("compiled.cwasm");
        self.run(
            &EngineSettings::for_target(target),
            Some(&target.key),
            component,
            &output,
        )?;
        std::fs::read(&output).map_err(|error| {
            WorkerError::Unavailable(format!("cannot read the compiled code back: {error}"))
        })
    }

    fn run(
        &self,
        engine: &EngineSettings,
        key: Option<&str>,
        component: &[u8],
        output: &Path,
    ) -> Result<(), WorkerError> {
        let request = Request {
            engine: engine.clone(),
            output: output.to_owned(),
            memory_limit: self.memory_limit,
            size: component.len() as u64,
            key: key.map(str::to_owned),
        };
        let request = serde_json::to_string(&request).map_err(|error| {
            WorkerError::Unavailable(format!("cannot write the request: {error}"))
        })?;
        let mut child = Command::new(&self.program)
            .args(&self.args)
            // The compiler reads untrusted bytes: it gets no credential a parent holds in its
            // environment (a lattice credential, a registry password), only what starting a
            // program needs.
            .env_clear()
            .envs(
                std::env::vars_os()
                    .filter(|(name, _)| PASSED_ENVIRONMENT.iter().any(|kept| name == kept)),
            )
            .arg(request)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| {
                WorkerError::Unavailable(format!(
                    "cannot start the compile worker {}: {error}",
                    self.program.display()
                ))
            })?;
        // The component goes in from a thread of its own, so a worker that stops reading
        // cannot hold this one past the deadline (killing it ends the write). Scoped, so it
        // writes from the caller's bytes rather than a copy of them.
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(WorkerError::Unavailable(
                "the compile worker has no stdin or stdout".to_owned(),
            ));
        };
        let outcome = std::thread::scope(|scope| {
            let writer = std::thread::Builder::new()
                .name("shoal-compile-in".into())
                .spawn_scoped(scope, move || stdin.write_all(component));
            let reader = std::thread::Builder::new()
                .name("shoal-compile-out".into())
                .spawn_scoped(scope, move || {
                    let mut message = Vec::new();
                    let _ = stdout.take(MESSAGE_LIMIT as u64).read_to_end(&mut message);
                    message
                });
            let (Ok(writer), Ok(reader)) = (writer, reader) else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(WorkerError::Unavailable(
                    "cannot start a thread to talk to the compile worker".to_owned(),
                ));
            };
            let status = match wait(&mut child, self.timeout) {
                Ok(Some(status)) => status,
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(WorkerError::Died(format!(
                        "compiling this component took longer than {}s; the compiler was stopped",
                        self.timeout.as_secs()
                    )));
                }
                Err(error) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(WorkerError::Unavailable(format!(
                        "cannot wait for the compile worker: {error}"
                    )));
                }
            };
            let message = reader.join().unwrap_or_default();
            let written = matches!(writer.join(), Ok(Ok(())));
            Ok((
                status,
                String::from_utf8_lossy(&message).trim().to_owned(),
                written,
            ))
        });
        let (status, message, written) = outcome?;
        match status.code() {
            Some(0) if written => return Ok(()),
            Some(REFUSED) => return Err(WorkerError::Refused(message)),
            Some(UNAVAILABLE) => return Err(WorkerError::Unavailable(message)),
            Some(NOT_STORED) => return Err(WorkerError::Died(message)),
            // What a shell or loader says when the program could not be run at all (under
            // qemu-user, /proc/self/exe is the emulator): no worker, so the host compiles.
            Some(EXEC_FAILED) => {
                return Err(WorkerError::Unavailable(format!(
                    "the compile worker {} could not be run (exit {EXEC_FAILED})",
                    self.program.display()
                )));
            }
            _ => {}
        }
        #[cfg(unix)]
        let signal = std::os::unix::process::ExitStatusExt::signal(&status);
        #[cfg(not(unix))]
        let signal: Option<i32> = None;
        // Past the cap an allocation fails: the worker aborts (SIGABRT), or panics (a thread
        // it needs cannot start); the kernel's OOM killer sends SIGKILL.
        Err(WorkerError::Died(
            match (self.memory_limit, signal, status.code()) {
                (Some(limit), Some(6 | 9), _) | (Some(limit), None, Some(101)) => format!(
                    "compiling this component took more than the compile memory limit of {} MiB (shoal host --compile-memory); the compiler ended with {status}",
                    limit >> 20
                ),
                (None, Some(9), _) => format!(
                    "the compiler was killed while compiling this component ({status}; out of memory?)"
                ),
                _ => format!("the compiler failed while compiling this component ({status})"),
            },
        ))
    }
}

/// Waits for `child` until `timeout`: its status, or `None` when it is still running.
fn wait(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// The worker's side: reads the component from `input`, compiles it as `request` says and
/// writes the cache entry; the exit code and the message (for `stdout`) to end with.
pub fn serve(request: &str, input: &mut impl Read) -> (i32, String) {
    // A worker whose host is gone (killed, out of memory) stops with it.
    #[cfg(target_os = "linux")]
    let _ = rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL));
    let request: Request = match serde_json::from_str(request) {
        Ok(request) => request,
        Err(error) => {
            return (
                UNAVAILABLE,
                format!("cannot read the compile request: {error}"),
            );
        }
    };
    let mut component = Vec::new();
    if let Err(error) = input.read_to_end(&mut component) {
        return (UNAVAILABLE, format!("cannot read the component: {error}"));
    }
    if component.len() as u64 != request.size {
        return (
            UNAVAILABLE,
            format!(
                "read {} bytes of a {}-byte component",
                component.len(),
                request.size
            ),
        );
    }
    // The pool is how instances are allocated, not how code is compiled (the engine's
    // compatibility hash leaves it out: `a_pool_does_not_change_compiled_code`), and
    // reserving it would only cost the worker time and address space. The engine is made
    // before the cap, which is for compiling: a cap too small for the engine alone fails
    // the component below, never sends it back to the host uncapped.
    let settings = EngineSettings {
        pool: None,
        ..request.engine
    };
    let engine = match settings.engine() {
        Ok(engine) => engine,
        Err(error) => return (UNAVAILABLE, error.to_string()),
    };
    if let Some(wanted) = &request.key {
        let key = crate::target::compile_key(&engine);
        if key != *wanted {
            return (
                REFUSED,
                format!(
                    "this build makes code with compile key {key} for that target, not {wanted} (another wasmtime version or setting)"
                ),
            );
        }
    }
    if let Some(limit) = request.memory_limit {
        let limit = rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        };
        if let Err(error) = rustix::process::setrlimit(rustix::process::Resource::Data, limit) {
            return (
                NOT_STORED,
                format!("cannot cap the compile worker's memory: {error}"),
            );
        }
    }
    let compiled = match engine.precompile_component(&component) {
        Ok(compiled) => compiled,
        Err(error) => return (REFUSED, format!("{error:#}")),
    };
    match store_compiled(&request.output, &compiled) {
        Ok(()) => (0, String::new()),
        Err(error) => (
            NOT_STORED,
            format!(
                "cannot write the compiled component to {}: {error}",
                request.output.display()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};

    use super::*;
    use crate::engine::PoolSettings;

    fn hash(settings: &EngineSettings) -> u64 {
        let engine = settings.engine().unwrap();
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        hasher.finish()
    }

    #[test]
    fn a_pool_does_not_change_compiled_code() {
        let on_demand = EngineSettings {
            fuel: false,
            wasi_03: true,
            pool: None,
            target: None,
        };
        let pooled = EngineSettings {
            pool: Some(PoolSettings {
                slots: 16,
                keep_resident: 1 << 20,
            }),
            ..on_demand.clone()
        };
        assert_eq!(hash(&on_demand), hash(&pooled));
        // What does change it, so the worker must be told.
        assert_ne!(
            hash(&on_demand),
            hash(&EngineSettings {
                fuel: true,
                ..on_demand.clone()
            })
        );
    }

    #[test]
    fn a_worker_refuses_what_does_not_compile_and_writes_what_does() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("out.cwasm");
        let request_for = |target, output: &Path, key: Option<String>| {
            serde_json::to_string(&Request {
                engine: EngineSettings {
                    fuel: false,
                    wasi_03: false,
                    pool: None,
                    target,
                },
                output: output.to_owned(),
                memory_limit: None,
                size: 8,
                key,
            })
            .unwrap()
        };
        let request = request_for(None, &output, None);
        let (code, message) = serve(&request, &mut &b"not wasm"[..]);
        assert_eq!(code, REFUSED, "{message}");
        assert!(!output.exists());
        // The empty component: the magic, version 0x0d, layer 1.
        let empty = b"\0asm\x0d\x00\x01\x00";
        let (code, message) = serve(&request, &mut &empty[..]);
        assert_eq!(code, 0, "{message}");
        assert!(output.exists());
        // Asked for code of another engine than this build makes for those settings: nothing.
        let other = dir.path().join("other.cwasm");
        let request = request_for(crate::target::native_target(), &other, Some("0".repeat(32)));
        let (code, message) = serve(&request, &mut &empty[..]);
        assert_eq!(code, REFUSED, "{message}");
        assert!(message.contains("compile key"), "{message}");
        assert!(!other.exists());
        let (code, message) = serve("{\"engine\": 1}", &mut &b""[..]);
        assert_eq!(code, UNAVAILABLE);
        assert!(message.contains("compile request"), "{message}");
    }
}

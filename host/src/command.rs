//! Running a wasi:cli command component (WASI 0.2 or 0.3) to completion, as `docker run` runs
//! a container.

use std::sync::Arc;

use wasmtime::component::Component;
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::engine::Runtime;
use crate::error::{FailureCause, HostError};
use crate::guest::{GuestOptions, new_store};
use crate::http::{classify, exports, instantiate_pre};
use crate::limits::{CpuQuota, Limits};

/// Exit code for a guest that trapped, as a shell reports a process killed by SIGABRT.
pub const TRAP_EXIT_CODE: i32 = 134;

/// How a command ended.
#[derive(Debug)]
pub struct CommandOutcome {
    /// The exit code to pass on.
    pub code: i32,
    /// Why it failed, when it trapped or timed out.
    pub failure: Option<(FailureCause, String)>,
}

/// Runs `component`'s `wasi:cli/run` with the given grants and limits; stdin is the
/// process's with `inherit_stdin` (`shoal run`), else empty (a job's run); stdout and
/// stderr go where `options.output` says.
///
/// # Errors
/// [`HostError`] when the component cannot be linked or instantiated.
pub async fn run(
    runtime: &Runtime,
    component: &Component,
    options: &GuestOptions,
    limits: &Limits,
    inherit_stdin: bool,
) -> Result<CommandOutcome, HostError> {
    options.validate()?;
    let engine = runtime.engine();
    let pre = instantiate_pre(runtime, component)?;
    let cpu = limits
        .cpu_millicores
        .map(|millicores| Arc::new(CpuQuota::new(millicores)));
    let mut store = new_store(engine, options, limits, cpu.as_ref(), inherit_stdin)?;
    let instantiated = |error: wasmtime::Error| HostError::Instantiate(format!("{error:#}"));
    // WASI 0.3 first (`wasi:cli/run@0.3`, an async export run on the store's event loop),
    // then 0.2.
    let result = if let Ok(pre) = wasmtime_wasi::p3::bindings::CommandPre::new(pre.clone()) {
        let command = pre
            .instantiate_async(&mut store)
            .await
            .map_err(instantiated)?;
        store
            .run_concurrent(async |store| command.wasi_cli_run().call_run(store).await)
            .await
            .and_then(|result| result)
    } else {
        let pre =
            CommandPre::new(pre).map_err(|_| HostError::NotRunnable(exports(engine, component)))?;
        let command = pre
            .instantiate_async(&mut store)
            .await
            .map_err(instantiated)?;
        command.wasi_cli_run().call_run(&mut store).await
    };
    Ok(match result {
        Ok(Ok(())) => CommandOutcome {
            code: 0,
            failure: None,
        },
        Ok(Err(())) => CommandOutcome {
            code: 1,
            failure: None,
        },
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<I32Exit>() {
                CommandOutcome {
                    code: exit.0,
                    failure: None,
                }
            } else {
                CommandOutcome {
                    code: TRAP_EXIT_CODE,
                    failure: Some(classify(&error, store.data())),
                }
            }
        }
    })
}

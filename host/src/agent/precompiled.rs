//! Code the control plane compiled ahead of time for this host's engine: before a replica
//! compiles a component the host has not compiled, the host looks for it in the lattice's
//! copy of components, under the component's digest and the engine's compile key, and puts
//! it into its compile cache, where loading checks it as any cache entry (its checksum, then
//! wasmtime's own check that it was made for this engine). That checksum finds damage, not
//! forgery: what makes the code trustworthy is that only the control plane can write the
//! bucket, so a host takes it only on a secure lattice, where nats-server enforces that. A
//! miss, an error or code that does not load means the host compiles, as it would without.

use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_lattice::Lattice;
use shoal_lattice::components::{MAX_COMPILED_BYTES, compiled_part, object_name};

use crate::engine::Runtime;

/// How long the lattice may take to hand it over before the host compiles instead.
const FETCH_DEADLINE: Duration = Duration::from_secs(30);

/// Puts the code the control plane compiled for `runtime`'s engine of the component whose
/// manifest digest is `manifest_digest` (and layer digest `layer_digest`) into the compile
/// cache, when the lattice has it and the cache does not.
pub(super) async fn adopt(
    runtime: &Arc<Runtime>,
    lattice: &Lattice,
    manifest_digest: &str,
    layer_digest: &str,
) {
    if manifest_digest.is_empty() || runtime.has_compiled(layer_digest) {
        return;
    }
    let component = manifest_digest;
    let name = object_name(component, &compiled_part(runtime.compile_key()));
    let started = Instant::now();
    let entry = match tokio::time::timeout(
        FETCH_DEADLINE,
        lattice.control_plane_object(&name, MAX_COMPILED_BYTES),
    )
    .await
    {
        Ok(Ok(Some(entry))) => entry,
        Ok(Ok(None)) => {
            tracing::debug!(
                component,
                "no precompiled code for this host in the lattice"
            );
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(component, error = %shoal_lattice::Chain(&error), "cannot read precompiled code from the lattice; compiling here");
            return;
        }
        Err(_) => {
            tracing::warn!(component, deadline = ?FETCH_DEADLINE, "the lattice took too long to hand over precompiled code; compiling here");
            return;
        }
    };
    let bytes = entry.len();
    let adopted = {
        let (runtime, layer_digest) = (Arc::clone(runtime), layer_digest.to_owned());
        tokio::task::spawn_blocking(move || runtime.adopt_compiled(&layer_digest, &entry)).await
    };
    match adopted {
        Ok(Ok(())) => tracing::info!(
            component,
            bytes,
            elapsed_ms = started.elapsed().as_millis(),
            "precompiled code from the lattice"
        ),
        Ok(Err(error)) => {
            tracing::warn!(component, %error, "precompiled code from the lattice refused; compiling here")
        }
        Err(error) => tracing::warn!(component, %error, "cannot adopt precompiled code"),
    }
}

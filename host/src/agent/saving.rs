//! The host's saved state: read at start (only this host's, in this lattice), written after
//! passes at most every [`SAVE_EVERY`], so a restart, offline too, serves what ran.

use std::time::Duration;

use shoal_lattice::records::now_millis;

use super::*;

/// The most often a host writes its saved state: a change waits at most this long.
pub(super) const SAVE_EVERY: Duration = Duration::from_millis(250);

impl<F: Fetch> Agent<F> {
    /// The saved state, when it is this host's in this lattice and can be read.
    pub(super) fn load_saved(&self, file: Option<&StateFile>) -> Option<HostState> {
        let file = file?;
        let swept = file.sweep();
        if swept > 0 {
            tracing::info!(
                files = swept,
                "removed temporary files an interrupted save left"
            );
        }
        match file.load() {
            Ok(Some(state))
                if state.host == self.options.id && state.lattice == self.options.lattice =>
            {
                Some(state)
            }
            Ok(Some(state)) => {
                tracing::warn!(
                    saved_for = %format!("{}/{}", state.lattice, state.host),
                    "the saved state is another host's or lattice's: not serving it"
                );
                None
            }
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "cannot use the saved state");
                None
            }
        }
    }

    /// Saves `state` when it differs from what was saved last.
    pub(super) async fn save(
        &self,
        file: Option<&StateFile>,
        state: HostState,
        last: &mut Option<HostState>,
    ) {
        let Some(file) = file else {
            return;
        };
        if last.as_ref() == Some(&state) {
            return;
        }
        let writer = file.clone();
        let saving = HostState {
            saved_at: now_millis(),
            ..state.clone()
        };
        match tokio::task::spawn_blocking(move || writer.save(&saving)).await {
            Ok(Ok(())) => *last = Some(state),
            Ok(Err(error)) => tracing::warn!(%error, "cannot save the host state"),
            Err(_) => tracing::warn!("saving the host state panicked"),
        }
    }

    /// Serves what runs with the routes last followed (the saved state): before the host
    /// has joined, and while the lattice is not the one its replicas came from.
    pub(super) fn serve_saved(&self, saved: Option<&HostState>, supervisor: &Supervisor<F>) {
        if let Some(state) = saved {
            self.route(None, &state.routes_to_serve(), &supervisor.replicas);
        }
        supervisor.count();
    }
}

//! What a host keeps on disk to serve without its lattice: its assignments (with their
//! templates), the routes of the apps it serves, and the identity of the lattice they came
//! from. A host restarted while NATS is unreachable starts its replicas from this file
//! (components and compiled code come from the caches by digest).
//!
//! The file is written crash-safely: a temporary file in the same directory, fsync, rename
//! over the old one, fsync of the directory. Its first line holds a format tag, the length
//! and the SHA-256 of the JSON body on the second line, so a torn or altered file is
//! detected and ignored (the host then starts as a new one), never a crash. Temporary files
//! a kill left behind are swept at start.
//!
//! Beside it, `secrets.xk` holds the host's secrets key (an x25519 seed, mode 0600): the
//! lattice seals the secrets of the replicas it places here to its public half, and the
//! saved assignments keep them sealed, so an offline restart can open them again.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use shoal_lattice::Validate as _;
use shoal_lattice::records::{Assignment, RouteRecord};

/// The tag on the first line of the file; a new layout gets a new tag.
const FORMAT: &str = "shoal-host-state/1";

/// The file's name in the state directory.
const FILE: &str = "state.json";

/// Prefix of the temporary files a save writes before its rename.
const TEMP_PREFIX: &str = ".state.json.tmp-";

/// The host's secrets key file in the state directory.
const SECRETS_KEY: &str = "secrets.xk";

/// Most bytes read from a state file: a host's state is small (assignments are bounded by
/// its capacity); anything larger is not one this host wrote.
const MAX_STATE_BYTES: u64 = 64 << 20;

/// What a host needs to serve while its lattice is unreachable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    /// The host id this state belongs to.
    pub host: String,
    /// The lattice name.
    pub lattice: String,
    /// The identity of the lattice the assignments came from (see
    /// [`shoal_lattice::records::LatticeIdentity`]), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lattice_id: Option<String>,
    /// When this state was saved (ms since the epoch).
    pub saved_at: u64,
    /// The replicas assigned here.
    #[serde(default)]
    pub assignments: Vec<Assignment>,
    /// The routes of the apps those replicas serve.
    #[serde(default)]
    pub routes: Vec<RouteRecord>,
}

impl HostState {
    /// The routes to serve the saved replicas with: the saved routing records, and for a
    /// replica whose app has none (the host stopped before the record arrived or was
    /// saved), the routes of the template it runs. A saved replica always has its routes,
    /// so a host restarted without its lattice answers them from its first second.
    pub fn routes_to_serve(&self) -> Vec<RouteRecord> {
        let mut routes = self.routes.clone();
        for assignment in self.assignments.iter().filter(|a| a.job.is_none()) {
            let known = routes.iter().any(|route| {
                route.namespace == assignment.namespace && route.app == assignment.app
            });
            if !known {
                routes.push(RouteRecord::for_app(
                    &assignment.namespace,
                    &assignment.app,
                    &assignment.template,
                    Vec::new(),
                ));
            }
        }
        routes
    }
}

/// Why a state file was not used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The file is not a whole state this version wrote (torn, truncated, altered, or of
    /// another format).
    #[error("{path} is not a usable host state ({reason}); starting without it")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// A host's state file in its state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    dir: PathBuf,
}

impl StateFile {
    /// The state file in `dir` (created on the first save).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Removes temporary files an interrupted save left; returns how many.
    pub fn sweep(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX))
            .filter(|entry| std::fs::remove_file(entry.path()).is_ok())
            .count()
    }

    /// Reads the saved state: `Ok(None)` when there is none.
    ///
    /// # Errors
    /// [`StateError::Unusable`] for a file that is torn, altered or not a state, and
    /// [`StateError::Io`] when it cannot be read; the caller starts without it.
    pub fn load(&self) -> Result<Option<HostState>, StateError> {
        let path = self.path();
        let unusable = |reason: String| StateError::Unusable {
            path: path.clone(),
            reason,
        };
        let bytes = match read_bounded(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Io { path, source }),
        };
        let Some(split) = bytes.iter().position(|byte| *byte == b'\n') else {
            return Err(unusable("no header line".to_owned()));
        };
        let (header, body) = (&bytes[..split], &bytes[split + 1..]);
        let header = std::str::from_utf8(header).map_err(|_| unusable("bad header".to_owned()))?;
        let mut fields = header.split(' ');
        let (Some(format), Some(length), Some(digest), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(unusable("bad header".to_owned()));
        };
        if format != FORMAT {
            return Err(unusable(format!("format {format:?}, not {FORMAT:?}")));
        }
        if length.parse::<usize>().ok() != Some(body.len()) {
            return Err(unusable(format!(
                "{} bytes of body, the header says {length}: torn",
                body.len()
            )));
        }
        if hex::encode(Sha256::digest(body)) != digest.trim_start_matches("sha256:") {
            return Err(unusable("checksum mismatch".to_owned()));
        }
        let mut state: HostState =
            serde_json::from_slice(body).map_err(|error| unusable(error.to_string()))?;
        // The file is trusted no more than the lattice: what breaks the bounds is dropped.
        state
            .assignments
            .retain(|assignment| assignment.validate().is_ok());
        state.routes.retain(|route| route.validate().is_ok());
        Ok(Some(state))
    }

    /// Saves `state` crash-safely (temporary file, fsync, rename, fsync of the directory).
    ///
    /// # Errors
    /// When the directory or file cannot be written; the previous state stays.
    pub fn save(&self, state: &HostState) -> Result<(), StateError> {
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| StateError::Io { path, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        let body = serde_json::to_vec(state).map_err(|error| StateError::Io {
            path: self.path(),
            source: std::io::Error::other(error),
        })?;
        let header = format!(
            "{FORMAT} {} sha256:{}\n",
            body.len(),
            hex::encode(Sha256::digest(&body))
        );
        let mut temp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        let temp_path = temp.path().to_owned();
        temp.write_all(header.as_bytes())
            .and_then(|()| temp.write_all(&body))
            .and_then(|()| temp.as_file().sync_all())
            .map_err(io(&temp_path))?;
        temp.persist(self.path()).map_err(|error| StateError::Io {
            path: self.path(),
            source: error.error,
        })?;
        // The rename is durable once the directory is.
        if let Ok(dir) = std::fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

impl StateFile {
    /// The host's secrets key: the one saved in the state directory, or a new one saved
    /// there (a file that holds no key is replaced: what was sealed to it cannot be opened
    /// anyway).
    ///
    /// # Errors
    /// When the file cannot be read or written; the caller then uses a key that lives only
    /// as long as the process.
    pub fn secrets_key(&self) -> Result<shoal_lattice::secrets::XKey, StateError> {
        let path = self.dir.join(SECRETS_KEY);
        shoal_lattice::secrets::key_file(&path)
            .map(|(key, _)| key)
            .map_err(|source| StateError::Io { path, source })
    }
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(MAX_STATE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_STATE_BYTES {
        return Err(std::io::Error::other("larger than any host state"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn state() -> HostState {
        HostState {
            host: "h1".into(),
            lattice: "default".into(),
            lattice_id: Some("L1".into()),
            saved_at: 1,
            assignments: Vec::new(),
            routes: vec![RouteRecord {
                namespace: "default".into(),
                app: "hello".into(),
                routes: Vec::new(),
                expose: Default::default(),
                timeout: None,
                endpoints: vec!["h1".into()],
                scale_to_zero: false,
            }],
        }
    }

    #[test]
    fn a_saved_replica_without_its_routing_record_is_served_with_its_template_s_routes() {
        let assignment: Assignment = serde_json::from_value(serde_json::json!({
            "replica": "shop-1", "app": "shop", "namespace": "default", "revision": 1,
            "generation": 1, "host": "h1", "digest": "sha256:ab", "createdAt": 1,
            "template": {
                "component": "r/shop:1",
                "routes": [{"path": "/shop"}],
                "autoscale": {"min": 0, "max": 2, "targetConcurrency": 5}
            }
        }))
        .unwrap();
        let mut saved = state();
        saved.assignments = vec![assignment];
        let routes = saved.routes_to_serve();
        // The saved record stays as it was; the replica's app gets its template's routes.
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0], saved.routes[0]);
        assert_eq!(
            (routes[1].namespace.as_str(), routes[1].app.as_str()),
            ("default", "shop")
        );
        assert_eq!(routes[1].routes[0].path, "/shop");
        assert!(routes[1].scale_to_zero && routes[1].endpoints.is_empty());
        // With its routing record saved, that record is used as it is.
        saved.routes.push(routes[1].clone());
        saved.routes[1].endpoints = vec!["h2".into()];
        assert_eq!(saved.routes_to_serve(), saved.routes);
    }

    #[test]
    fn a_saved_state_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        assert!(file.load().unwrap().is_none());
        file.save(&state()).unwrap();
        assert_eq!(file.load().unwrap(), Some(state()));
    }

    #[test]
    fn torn_altered_and_foreign_files_are_refused_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        file.save(&state()).unwrap();
        let whole = std::fs::read(file.path()).unwrap();
        let mut cases: Vec<Vec<u8>> = (0..whole.len())
            .step_by(7)
            .map(|cut| whole[..cut].to_vec())
            .collect();
        let mut flipped = whole.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        cases.push(flipped);
        cases.push(b"{\"host\":\"h1\"}".to_vec());
        cases.push(vec![0xff; 100]);
        for case in cases {
            std::fs::write(file.path(), &case).unwrap();
            match file.load() {
                Err(StateError::Unusable { .. }) => {}
                other => panic!("{:?} loaded as {other:?}", String::from_utf8_lossy(&case)),
            }
        }
    }

    #[test]
    fn temporary_files_of_an_interrupted_save_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path());
        file.save(&state()).unwrap();
        std::fs::write(dir.path().join(format!("{TEMP_PREFIX}abc")), b"half").unwrap();
        assert_eq!(file.sweep(), 1);
        assert_eq!(file.load().unwrap(), Some(state()));
    }
}

//! A real CNCF distribution registry (`docker-registry`, or upstream `registry`) on a free
//! loopback port, with its storage in a temp dir the test can reach into.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::{eventually, free_port};

pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
    auth: Option<(String, String)>,
    tls: bool,
}

fn binary() -> &'static str {
    for candidate in ["docker-registry", "registry"] {
        if Command::new(candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            return candidate;
        }
    }
    panic!("no OCI registry binary: install Debian's docker-registry (scripts/setup.sh does)");
}

impl Registry {
    /// An anonymous registry.
    pub fn start() -> Self {
        Self::launch(None)
    }

    /// A registry that wants HTTP basic auth with these credentials.
    pub fn with_auth(username: &str, password: &str) -> Self {
        Self::launch(Some((username.to_owned(), password.to_owned())))
    }

    /// A registry serving HTTPS with this certificate and key (PEM).
    pub fn with_tls(cert_pem: &str, key_pem: &str) -> Self {
        Self::launch_with(None, Some((cert_pem, key_pem)))
    }

    fn launch(auth: Option<(String, String)>) -> Self {
        Self::launch_with(auth, None)
    }

    fn launch_with(auth: Option<(String, String)>, tls: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = Self {
            child: None,
            dir,
            port: 0,
            auth,
            tls: tls.is_some(),
        };
        // A port that was free when picked can be taken before the registry binds it: a
        // registry that exits at start gets another.
        for _ in 0..5 {
            registry.port = free_port();
            registry.write_config(tls);
            if registry.spawn() {
                return registry;
            }
        }
        panic!("the registry did not start on five free ports");
    }

    fn write_config(&self, tls: Option<(&str, &str)>) {
        let dir = self.dir.path();
        let port = self.port;
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        if let Some((cert, key)) = tls {
            std::fs::write(dir.join("cert.pem"), cert).unwrap();
            std::fs::write(dir.join("key.pem"), key).unwrap();
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.join("cert.pem").display(),
                dir.join("key.pem").display()
            ));
        }
        if let Some((username, password)) = &self.auth {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(dir.join("htpasswd"), format!("{username}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        std::fs::write(dir.join("config.yml"), config).unwrap();
    }

    /// Starts the registry and waits until it answers (true) or has exited (false).
    fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new(binary())
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        let url = format!("{}/v2/", self.url());
        let tls = self.tls;
        eventually(Duration::from_secs(15), "the registry to answer", || {
            if let Some(child) = self.child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                self.child = None;
                return Some(false);
            }
            if tls {
                return std::net::TcpStream::connect(&address).ok().map(|_| true);
            }
            match ureq::get(&url).call() {
                Ok(_) | Err(ureq::Error::StatusCode(401)) => Some(true),
                Err(_) => None,
            }
        })
    }

    /// `127.0.0.1:PORT`, the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// A reference into this registry.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// Stops the registry (storage is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same storage.
    pub fn restart(&mut self) {
        self.stop();
        assert!(self.spawn(), "the registry did not start again on its port");
    }

    /// The file holding a blob's bytes in the registry's storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn request(&self, method: &str, url: &str) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let mut request = match method {
            "POST" => ureq::post(url),
            "PUT" => ureq::put(url),
            _ => unreachable!(),
        };
        if let Some((username, password)) = &self.auth {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            request = request.header("Authorization", format!("Basic {token}"));
        }
        request
    }

    /// Uploads a blob with plain HTTP calls (monolithic upload) and returns its digest.
    pub fn upload_blob(&self, repository: &str, bytes: &[u8]) -> String {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let response = self
            .request(
                "POST",
                &format!("{}/v2/{repository}/blobs/uploads/", self.url()),
            )
            .send_empty()
            .unwrap();
        let location = response
            .headers()
            .get("location")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url())
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        self.request("PUT", &format!("{location}{separator}digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .send(bytes)
            .unwrap();
        digest
    }

    /// Puts a manifest under a tag with plain HTTP and returns its digest.
    pub fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> String {
        self.request(
            "PUT",
            &format!("{}/v2/{repository}/manifests/{tag}", self.url()),
        )
        .header("Content-Type", media_type)
        .send(bytes)
        .unwrap();
        format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
    }

    /// Fetches a blob with a plain HTTP call.
    pub fn get_blob(&self, repository: &str, digest: &str) -> Vec<u8> {
        ureq::get(&format!("{}/v2/{repository}/blobs/{digest}", self.url()))
            .call()
            .unwrap()
            .body_mut()
            .read_to_vec()
            .unwrap()
    }

    /// Fetches a manifest with a plain HTTP call.
    pub fn get_manifest(&self, repository: &str, reference: &str) -> serde_json::Value {
        let bytes = ureq::get(&format!(
            "{}/v2/{repository}/manifests/{reference}",
            self.url()
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .unwrap()
        .body_mut()
        .read_to_vec()
        .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    /// The repositories the registry holds (empty when nothing was ever pushed).
    pub fn repositories(&self) -> Vec<String> {
        let mut request = ureq::get(&format!("{}/v2/_catalog", self.url()));
        if let Some((username, password)) = &self.auth {
            use base64::Engine as _;
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            request = request.header("Authorization", format!("Basic {token}"));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&request.call().unwrap().body_mut().read_to_vec().unwrap())
                .unwrap();
        body["repositories"]
            .as_array()
            .map(|repositories| {
                repositories
                    .iter()
                    .filter_map(|repository| repository.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Overwrites a stored blob with other bytes of the same length.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_file(digest);
        let mut bytes = std::fs::read(&path).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

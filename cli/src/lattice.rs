//! The global `--nats` and `--lattice` options and the connection they describe.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use shoal_lattice::{ConnectOptions, Lattice, NatsAuth, NatsTls, api, auth};

/// The default NATS server: a local one, as `shoal up` starts.
pub const DEFAULT_NATS: &str = "nats://127.0.0.1:4222";

/// Where `shoal up` leaves the admin credential for later commands run in its directory.
pub const LOCAL_CREDS: &str = ".shoal/admin.creds";
/// Where `shoal up` notes its signing identity's directory, for `shoal auth` run in its
/// directory.
pub const LOCAL_AUTH_DIR: &str = ".shoal/auth-dir";

/// The credential used when none is given: `SHOAL_CREDS`, else the one `shoal up` left in
/// this directory.
fn default_creds() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_CREDS").filter(|path| !path.is_empty()) {
        return Some(PathBuf::from(path));
    }
    let local = PathBuf::from(LOCAL_CREDS);
    local.is_file().then_some(local)
}

/// Which lattice to talk to.
#[derive(Debug, Clone, Args)]
pub struct LatticeArgs {
    /// NATS server URL of the lattice [default: nats://127.0.0.1:4222].
    #[arg(long, env = "SHOAL_NATS", global = true, value_name = "URL")]
    pub nats: Option<String>,

    /// Lattice name: several lattices can share one NATS system.
    #[arg(long, env = "SHOAL_LATTICE", global = true, default_value = "default")]
    pub lattice: String,

    /// How many NATS servers keep each of the lattice's buckets and streams, when this
    /// command is the one that creates them: 3 on a three-server cluster, so the lattice
    /// survives losing one. Existing buckets keep theirs.
    #[arg(
        long,
        env = "SHOAL_LATTICE_REPLICAS",
        global = true,
        default_value = "1",
        value_parser = clap::value_parser!(u8).range(1..=5),
        help_heading = "NATS connection"
    )]
    pub lattice_replicas: u8,

    /// NATS user (the password comes from SHOAL_NATS_PASSWORD).
    #[arg(
        long,
        env = "SHOAL_NATS_USER",
        global = true,
        help_heading = "NATS connection"
    )]
    pub nats_user: Option<String>,

    /// NATS password, for --nats-user.
    #[arg(
        long,
        env = "SHOAL_NATS_PASSWORD",
        global = true,
        hide_env_values = true,
        help_heading = "NATS connection"
    )]
    pub nats_password: Option<String>,

    /// NATS token.
    #[arg(
        long,
        env = "SHOAL_NATS_TOKEN",
        global = true,
        hide_env_values = true,
        help_heading = "NATS connection"
    )]
    pub nats_token: Option<String>,

    /// NATS credentials file (JWT and NKey seed, as `shoal auth` and `nsc` write)
    /// [default: $SHOAL_CREDS, else .shoal/admin.creds in this directory when `shoal up`
    /// wrote one].
    #[arg(
        long,
        env = "SHOAL_NATS_CREDS",
        global = true,
        value_name = "FILE",
        help_heading = "NATS connection"
    )]
    pub nats_creds: Option<PathBuf>,

    /// JetStream domain of the lattice's state, for hosts on a site's leaf nats-server
    /// whose hub runs JetStream in that domain (`shoal up --leafnodes` names it `hub`).
    #[arg(
        long,
        env = "SHOAL_JS_DOMAIN",
        global = true,
        value_name = "DOMAIN",
        help_heading = "NATS connection"
    )]
    pub js_domain: Option<String>,

    /// Read the lattice's components from the copy an open site's leaf nats-server keeps
    /// (`shoal up --leaf` keeps one): for hosts of a site, which then fetch one copy of
    /// each component over the site's uplink between them.
    #[arg(
        long,
        env = "SHOAL_SITE_COPY",
        global = true,
        help_heading = "NATS connection"
    )]
    pub site_copy: bool,

    /// The same on a secure site, with the reader's credential `shoal auth site` wrote
    /// (`site-copy-reader.creds`).
    #[arg(
        long,
        env = "SHOAL_SITE_COPY_CREDS",
        global = true,
        value_name = "FILE",
        help_heading = "NATS connection"
    )]
    pub site_copy_creds: Option<PathBuf>,

    /// CA certificate (PEM) to trust for a TLS NATS server; implies TLS.
    #[arg(
        long,
        env = "SHOAL_NATS_CA",
        global = true,
        value_name = "FILE",
        help_heading = "NATS connection"
    )]
    pub nats_ca: Option<PathBuf>,

    /// Client certificate (PEM) for NATS servers that verify clients; needs --nats-key.
    #[arg(
        long,
        env = "SHOAL_NATS_CERT",
        global = true,
        value_name = "FILE",
        requires = "nats_key",
        help_heading = "NATS connection"
    )]
    pub nats_cert: Option<PathBuf>,

    /// Client key (PEM), for --nats-cert.
    #[arg(
        long,
        env = "SHOAL_NATS_KEY",
        global = true,
        value_name = "FILE",
        requires = "nats_cert",
        help_heading = "NATS connection"
    )]
    pub nats_key: Option<PathBuf>,
}

impl LatticeArgs {
    /// The NATS URL, defaulted.
    pub fn url(&self) -> &str {
        self.nats.as_deref().unwrap_or(DEFAULT_NATS)
    }

    fn auth(&self) -> anyhow::Result<NatsAuth> {
        Ok(
            match (&self.nats_user, &self.nats_token, &self.nats_creds) {
                (Some(user), None, None) => {
                    let password = self
                        .nats_password
                        .clone()
                        .context("--nats-user needs a password: set SHOAL_NATS_PASSWORD")?;
                    NatsAuth::UserPassword(user.clone(), password)
                }
                (None, Some(token), None) => NatsAuth::Token(token.clone()),
                (None, None, Some(creds)) => NatsAuth::CredsFile(creds.clone()),
                (None, None, None) => match default_creds() {
                    Some(creds) => NatsAuth::CredsFile(creds),
                    None => NatsAuth::None,
                },
                _ => bail!("give one of --nats-user, --nats-token and --nats-creds, not several"),
            },
        )
    }

    /// Connects as a host or scheduler publishing events and logs as `origin`.
    pub async fn connect_as(&self, client_name: &str, origin: &str) -> anyhow::Result<Lattice> {
        self.connect_with(client_name, origin, false).await
    }

    /// Connects as a host or scheduler, without context: the error as the lattice client
    /// gives it, so the caller can tell a refusal from an unreachable server.
    pub async fn connect_lattice(
        &self,
        client_name: &str,
        origin: &str,
    ) -> Result<Lattice, shoal_lattice::Error> {
        let auth = self.auth().map_err(|error| shoal_lattice::Error::Connect {
            url: self.url().to_owned(),
            source: error.into(),
        })?;
        Lattice::connect(&self.connect_options(client_name, origin, false, auth)).await
    }

    /// Who this command's credential is for, when it has one.
    pub fn holder(&self) -> anyhow::Result<Option<auth::Holder>> {
        match self.auth()? {
            NatsAuth::CredsFile(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Some(auth::holder(&text).with_context(|| {
                    format!("{} is not a credential", path.display())
                })?))
            }
            _ => Ok(None),
        }
    }

    /// The account that signs hosts' credentials in this command's lattice, when the
    /// command has a Shoal credential: a scheduler's names it (its own is signed by the
    /// state account), anyone else's was signed by it. A secure lattice's control plane
    /// checks hosts' credentials against it.
    pub fn account(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .holder()?
            .filter(|holder| !holder.kind.is_empty())
            .map(|holder| holder.clients_account.unwrap_or(holder.issuer)))
    }

    /// The JWT of this command's credential, when it has a `.creds` file.
    pub fn credential_jwt(&self) -> anyhow::Result<Option<String>> {
        match self.auth()? {
            NatsAuth::CredsFile(path) => {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(auth::creds_jwt(&text).map(str::to_owned))
            }
            _ => Ok(None),
        }
    }

    /// The control API, as the holder of this command's credential, and the connection
    /// (for logs and events, read from the journals).
    pub async fn api(&self, client_name: &str) -> anyhow::Result<(api::Client, Lattice)> {
        let holder = self.holder()?;
        let connection = self.connect_with(client_name, "", true).await?;
        let client = api::Client::new(connection.client().clone(), &self.lattice, holder.as_ref());
        Ok((client, connection))
    }

    /// Connects to nats-server's system account with the presence credential `creds`
    /// (for a scheduler to hear hosts' connections open and close).
    pub async fn connect_presence(&self, creds: &std::path::Path) -> anyhow::Result<Lattice> {
        let options = self.connect_options(
            "shoal scheduler presence",
            "",
            true,
            NatsAuth::CredsFile(creds.to_owned()),
        );
        Lattice::connect(&options).await.with_context(|| {
            format!(
                "cannot connect with the presence credential {}",
                creds.display()
            )
        })
    }

    async fn connect_with(
        &self,
        client_name: &str,
        origin: &str,
        skip_buckets: bool,
    ) -> anyhow::Result<Lattice> {
        Lattice::connect(&self.connect_options(client_name, origin, skip_buckets, self.auth()?))
            .await
            .with_context(|| format!("cannot reach lattice {:?}", self.lattice))
    }

    fn connect_options(
        &self,
        client_name: &str,
        origin: &str,
        skip_buckets: bool,
        auth: NatsAuth,
    ) -> ConnectOptions {
        let tls = (self.nats_ca.is_some() || self.nats_cert.is_some()).then(|| NatsTls {
            ca: self.nats_ca.clone(),
            client: self.nats_cert.clone().zip(self.nats_key.clone()),
        });
        ConnectOptions {
            url: self.url().to_owned(),
            lattice: self.lattice.clone(),
            client_name: client_name.to_owned(),
            auth,
            tls,
            replicas: usize::from(self.lattice_replicas),
            origin: origin.to_owned(),
            skip_buckets,
            js_domain: self.js_domain.clone(),
            site_copy: match (&self.site_copy_creds, self.site_copy) {
                (Some(creds), _) => shoal_lattice::SiteCopy::Reader(creds.clone()),
                (None, true) => shoal_lattice::SiteCopy::Domain,
                (None, false) => shoal_lattice::SiteCopy::None,
            },
            // A command reads the journals and publishes nothing to them: the processes
            // that publish (schedulers, hosts) make them exist. Two round trips saved.
            skip_journals: skip_buckets,
        }
    }
}

//! `shoal auth init|host|scheduler|user|site|revoke|list`: a lattice's signing identity and the
//! credentials it mints.
//!
//! `init` makes an operator, the lattice's two accounts and a system account, and writes
//! `nats-auth.conf` for nats-server (operator mode, NATS-based account resolver). The
//! state account holds the lattice's JetStream state and signs schedulers' credentials; the
//! clients' account, without JetStream, signs hosts', sites' and people's and imports from
//! the state account only what they use (`shoal_lattice::auth::AccountKind` says why).
//! Minting a credential needs no server change: nats-server trusts any user JWT an account
//! signs. Revoking re-signs the accounts with the user's key in their revocation lists and
//! pushes them through the system account, so it takes effect at once (nats-server closes
//! the revoked connections) without a restart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde::{Deserialize, Serialize};
use shoal_lattice::auth::{self, Grant, Identity, Role};
use shoal_lattice::names::{check_host_id, check_name};

use crate::lattice::LatticeArgs;

/// The signing identity's files in an auth directory.
const STATE: &str = "auth.json";
const OPERATOR_SEED: &str = "operator.nk";
const ACCOUNT_SEED: &str = "account.nk";
/// The clients' account's seed (hosts, sites, people).
const CLIENTS_SEED: &str = "clients.nk";
/// A signing key of the clients' account, with which schedulers mint hosts' credentials
/// for the key-value stores of the apps they run (`shoal scheduler --store-key`).
pub const STORE_KEY: &str = "stores.nk";
const SYSTEM_SEED: &str = "system.nk";
/// The system account's user, which pushes account updates to nats-server.
pub const SYSTEM_CREDS: &str = "system.creds";
/// A user of the system account that may only hear hosts' connections open and close, for
/// `shoal scheduler --presence-creds` (fast failover).
pub const PRESENCE_CREDS: &str = "presence.creds";
/// The lattice's secrets key (an xkey seed), for `shoal scheduler --secrets-key`.
pub const SECRETS_KEY: &str = "secrets.xk";
/// The file nats-server includes.
pub const SERVER_CONFIG: &str = "nats-auth.conf";

/// Create a lattice's signing identity and mint credentials for hosts, schedulers and people.
#[derive(Debug, Args)]
pub struct AuthArgs {
    /// Where the signing identity lives [default: the one `shoal up` made, when run in this
    /// directory (.shoal/auth-dir names it), else ~/.local/share/shoal/nats/auth].
    #[arg(long, env = "SHOAL_AUTH_DIR", global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create the signing identity (operator, account, system account) and nats-server's
    /// auth config. Does nothing when the directory already holds one.
    Init,
    /// Mint a credential for one host: it may write only its own host record and replica
    /// statuses, hear only requests sent to it, and publish only its own logs and events.
    ///
    /// What the host says of itself counts for placement only within what is granted
    /// here: on a secure lattice it is matched only by the labels given (and its `arch` and
    /// `os`), and given at most the memory, CPU and replicas given (without them, what it
    /// reports).
    Host {
        /// The host's id (`shoal host --id`; a host started with this credential takes it as
        /// its id by default).
        id: String,
        /// A label placement may match the host by, KEY=VALUE (repeatable).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::commands::host::parse_label)]
        labels: Vec<(String, String)>,
        /// The most memory its replicas may reserve (2Gi, 512Mi).
        #[arg(long)]
        memory: Option<shoal_lattice::quantity::Memory>,
        /// The most CPU its replicas may reserve (2, 500m).
        #[arg(long)]
        cpu: Option<shoal_lattice::quantity::Millicores>,
        /// The most replicas it may run.
        #[arg(long)]
        max_replicas: Option<u32>,
        /// Write the credential here (mode 0600) instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Mint a credential for a scheduler (the control plane: it writes desired state and
    /// serves the control API).
    Scheduler {
        /// The scheduler's name.
        name: String,
        /// Write the credential here (mode 0600) instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Mint a credential for a person or a CI job, with roles per namespace or for the whole
    /// lattice: viewer (get, describe, logs, events), editor (also apply, delete, scale,
    /// rollout), admin (everything).
    User {
        /// The user's name.
        name: String,
        /// The role: viewer, editor or admin.
        #[arg(long, value_name = "ROLE")]
        role: Role,
        /// A namespace the role holds in (repeat for several); none: the whole lattice.
        #[arg(short, long = "namespace", value_name = "NS")]
        namespaces: Vec<String>,
        /// Write the credential here (mode 0600) instead of standard output.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Revoke every credential minted for NAME; nats-server closes their connections within
    /// seconds and refuses them from then on.
    Revoke {
        /// The host, scheduler or user.
        name: String,
    },
    /// Mint what a site (`shoal up --leaf`) needs to reach a secure hub, into DIR: a
    /// credential for each of its hosts (<site>-1 … <site>-N), one for its leaf connection
    /// that may do what those hosts may and nothing more, and the leaf nats-server's trust
    /// config, so the leaf checks each host's own credential even while the hub is away.
    Site {
        /// The site's name (`shoal up --site`).
        name: String,
        /// How many hosts the site runs (`shoal up --hosts`), at most 50.
        #[arg(long, default_value = "1")]
        hosts: u16,
        /// The hub's JetStream domain (`shoal up --hub-domain`).
        #[arg(long, default_value = "hub")]
        domain: String,
        /// The most the site's copy of the lattice's components may hold on the site's
        /// leaf (its hosts fetch each component over the uplink once, from the copy).
        #[arg(long, value_parser = crate::registry::parse_size, default_value = DEFAULT_COPY_SIZE, value_name = "SIZE")]
        copy_size: u64,
        /// The directory to write into (created, files mode 0600); copy it to the site and
        /// pass it to `shoal up --leaf URL --site NAME --site-auth DIR`.
        #[arg(short, long, value_name = "DIR")]
        output: PathBuf,
    },
    /// Mint a new presence credential (`presence.creds` in the auth directory, for
    /// `shoal scheduler --presence-creds`) and withdraw the earlier ones: schedulers still
    /// holding an old one hear no connections closing (hosts are then lost by their
    /// heartbeats) until they are given the new file. With --revoke, withdraw them all and
    /// mint none.
    Presence {
        /// Until when nats-server admits it (for example 90d); without: no expiry.
        #[arg(long, value_parser = crate::duration::parse, value_name = "DURATION")]
        expires: Option<std::time::Duration>,
        /// Withdraw every presence credential and mint none.
        #[arg(long, conflicts_with = "expires")]
        revoke: bool,
    },
    /// List the identities minted, with their roles and whether they are revoked.
    List,
}

/// One minted credential.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Minted {
    #[serde(flatten)]
    identity: Identity,
    public_key: String,
    issued_at: u64,
    /// The JetStream domain it reaches the lattice's state in (a site's hosts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hub_domain: Option<String>,
    #[serde(default)]
    revoked: bool,
}

/// What `shoal auth site` writes beside a site's credentials, for `shoal up --site-auth`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SiteAuth {
    /// The lattice.
    pub lattice: String,
    /// The site's name.
    pub site: String,
    /// The hub's JetStream domain.
    pub domain: String,
    /// The clients' account's public key, which the leaf connection binds to.
    pub account: String,
    /// The site's host ids; each has `<id>.creds` beside this file.
    pub hosts: Vec<String>,
    /// The public key of the account keeping the site's copy of the lattice's components
    /// (JetStream on, on the site's leaf only), whose keeper's credential is
    /// [`SITE_COPY_CREDS`]; none for a site minted before sites kept one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_account: Option<String>,
    /// The most that copy may hold.
    #[serde(default)]
    pub copy_bytes: u64,
}

/// The most hosts one site credential carries.
const MAX_SITE_HOSTS: u16 = 50;

/// The files of a site's auth directory.
pub const SITE_FILE: &str = "site.json";
/// The leaf connection's credential.
pub const SITE_CREDS: &str = "site.creds";
/// The leaf nats-server's trust config (operator mode, accounts preloaded).
pub const LEAF_CONFIG: &str = "leaf-auth.conf";
/// How much a site's copy of the lattice's components holds unless told.
pub const DEFAULT_COPY_SIZE: &str = "1GiB";
/// The credential that makes the site's copy of the components (`shoal up --leaf`).
pub const SITE_COPY_CREDS: &str = "site-copy.creds";
/// The credential with which the site's hosts read that copy.
pub const SITE_COPY_READER_CREDS: &str = "site-copy-reader.creds";
/// The credential of the copy's own leaf connection to the hub.
pub const SITE_COPY_LEAF_CREDS: &str = "site-copy-leaf.creds";

/// The account keeping a site's copy of the components, as its leaf preloads it.
struct SiteCopy {
    /// Its public key.
    account: String,
    /// Its JWT.
    jwt: String,
}

/// What `auth.json` keeps: public keys, the account's revocations, what was minted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    lattice: String,
    operator: String,
    /// The state account (JetStream, schedulers).
    account: String,
    /// The clients' account (hosts, sites, people); absent in an identity made before
    /// lattices had one, until [`Authority::init`] adds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clients: Option<String>,
    system: String,
    account_issued_at: u64,
    #[serde(default)]
    revocations: BTreeMap<String, u64>,
    #[serde(default)]
    minted: Vec<Minted>,
    /// The presence credentials minted (system account users): their public keys.
    #[serde(default)]
    presence: Vec<MintedPresence>,
    /// The system account's revocations: presence credentials withdrawn.
    #[serde(default)]
    system_revocations: BTreeMap<String, u64>,
}

/// One presence credential minted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MintedPresence {
    public_key: String,
    issued_at: u64,
    /// When nats-server stops admitting it (seconds since the epoch); none: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    #[serde(default)]
    revoked: bool,
}

/// The default auth directory: next to `shoal up`'s JetStream data, since the account's
/// JetStream state belongs to its key.
pub fn default_dir() -> anyhow::Result<PathBuf> {
    Ok(dirs::data_dir()
        .context("no data directory for this user: pass --dir")?
        .join("shoal/nats/auth"))
}

/// The auth directory a command uses without `--dir`: the one `shoal up` noted in this
/// directory (`.shoal/auth-dir`, as `.shoal/admin.creds` serves the other commands), else
/// [`default_dir`].
fn command_dir() -> anyhow::Result<PathBuf> {
    if let Ok(noted) = std::fs::read_to_string(crate::lattice::LOCAL_AUTH_DIR) {
        let noted = PathBuf::from(noted.trim());
        if noted.join(STATE).is_file() {
            return Ok(noted);
        }
    }
    default_dir()
}

fn now() -> u64 {
    shoal_lattice::records::now_millis() / 1000
}

/// Writes `text` to `path` readable by its owner only, crash-safely (temp file, fsync,
/// rename).
pub fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)
        .with_context(|| format!("cannot write {}", temp.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("cannot write {}", path.display()))
}

fn read_seed(dir: &Path, file: &str) -> anyhow::Result<nkeys::KeyPair> {
    let path = dir.join(file);
    let seed = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    nkeys::KeyPair::from_seed(seed.trim())
        .with_context(|| format!("{} does not hold an nkey seed", path.display()))
}

/// A lattice's signing identity on disk.
pub struct Authority {
    dir: PathBuf,
    state: State,
}

impl Authority {
    /// Creates the signing identity in `dir` for `lattice`, or opens the one there.
    pub fn init(dir: &Path, lattice: &str) -> anyhow::Result<(Self, bool)> {
        if dir.join(STATE).exists() {
            let authority = Self::read(dir)?;
            if authority.state.lattice != lattice {
                bail!(
                    "{} holds the identity of lattice {:?}, not {lattice:?}",
                    dir.display(),
                    authority.state.lattice
                );
            }
            let mut authority = authority;
            if authority.state.clients.is_none() {
                authority.add_clients_account()?;
            }
            if !dir.join(STORE_KEY).exists() {
                let key = nkeys::KeyPair::new_account();
                write_secret(&dir.join(STORE_KEY), &format!("{}\n", key.seed()?))?;
            }
            if dir.join(PRESENCE_CREDS).exists() {
                // One written before keys were recorded: recorded now, so it can be withdrawn.
                authority.adopt_presence_file();
            } else {
                authority.write_presence_creds(None)?;
            }
            // Rewrites nats-server's config as this version of Shoal writes it.
            authority.save()?;
            return Ok((authority, false));
        }
        check_name("lattice name", lattice)?;
        std::fs::create_dir_all(dir.join("jwt"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let operator = nkeys::KeyPair::new_operator();
        let account = nkeys::KeyPair::new_account();
        let clients = nkeys::KeyPair::new_account();
        let system = nkeys::KeyPair::new_account();
        for (file, key) in [
            (OPERATOR_SEED, &operator),
            (ACCOUNT_SEED, &account),
            (CLIENTS_SEED, &clients),
            (STORE_KEY, &nkeys::KeyPair::new_account()),
            (SYSTEM_SEED, &system),
        ] {
            write_secret(&dir.join(file), &format!("{}\n", key.seed()?))?;
        }
        let issued_at = now();
        let system_user = nkeys::KeyPair::new_user();
        let system_jwt = auth::user_jwt(
            &system,
            &system_user.public_key(),
            "system",
            None,
            Vec::new(),
            issued_at,
            None,
        )?;
        write_secret(
            &dir.join(SYSTEM_CREDS),
            &auth::creds(&system_jwt, &system_user.seed()?),
        )?;
        let mut authority = Self {
            dir: dir.to_owned(),
            state: State {
                lattice: lattice.to_owned(),
                operator: operator.public_key(),
                account: account.public_key(),
                clients: Some(clients.public_key()),
                system: system.public_key(),
                account_issued_at: issued_at,
                revocations: BTreeMap::new(),
                minted: Vec::new(),
                presence: Vec::new(),
                system_revocations: BTreeMap::new(),
            },
        };
        authority.write_presence_creds(None)?;
        authority.save()?;
        // The lattice's secrets key, for its schedulers (`shoal scheduler --secrets-key`).
        shoal_lattice::secrets::key_file(&dir.join(SECRETS_KEY))
            .with_context(|| format!("cannot write {}", dir.join(SECRETS_KEY).display()))?;
        Ok((authority, true))
    }

    /// Writes the presence credential (`presence.creds`): a system account user that may
    /// hear the clients' account's connect and disconnect advisories and do nothing else,
    /// until `lifetime` has passed when given. Records its key (save the state after).
    fn write_presence_creds(
        &mut self,
        lifetime: Option<std::time::Duration>,
    ) -> anyhow::Result<()> {
        let system = read_seed(&self.dir, SYSTEM_SEED)?;
        let user = nkeys::KeyPair::new_user();
        let permissions = shoal_lattice::presence::presence_permissions(self.clients()?);
        let issued_at = now();
        let expires_at =
            lifetime.map(|lifetime| issued_at.saturating_add(lifetime.as_secs().max(1)));
        let jwt = auth::user_jwt(
            &system,
            &user.public_key(),
            "presence",
            Some(&permissions),
            Vec::new(),
            issued_at,
            expires_at,
        )?;
        write_secret(
            &self.dir.join(PRESENCE_CREDS),
            &auth::creds(&jwt, &user.seed()?),
        )?;
        self.state.presence.push(MintedPresence {
            public_key: user.public_key(),
            issued_at,
            expires_at,
            revoked: false,
        });
        Ok(())
    }

    /// Records the key of the presence credential in the auth directory when it was written
    /// before keys were recorded, so it can be withdrawn like the others.
    fn adopt_presence_file(&mut self) {
        if let Ok(text) = std::fs::read_to_string(self.dir.join(PRESENCE_CREDS))
            && let Ok(holder) = auth::holder(&text)
            && !self
                .state
                .presence
                .iter()
                .any(|minted| minted.public_key == holder.public_key)
        {
            self.state.presence.push(MintedPresence {
                public_key: holder.public_key,
                issued_at: 0,
                expires_at: None,
                revoked: false,
            });
        }
    }

    /// Withdraws every presence credential minted so far (but the one `keep` names) and
    /// returns the system account's JWT to push, which carries the revocations.
    fn revoke_presence(&mut self, keep: Option<&str>) -> anyhow::Result<String> {
        let issued_at = self.next_issue();
        for minted in &mut self.state.presence {
            if Some(minted.public_key.as_str()) != keep && !minted.revoked {
                minted.revoked = true;
                self.state
                    .system_revocations
                    .entry(minted.public_key.clone())
                    .or_insert(issued_at);
            }
        }
        self.save()?;
        self.system_account_jwt()
    }

    /// The time of new revocations and of the account JWTs that carry them (now, later than
    /// the JWTs they replace: one issued in the same second would not replace them), made
    /// the accounts' issue time.
    fn next_issue(&mut self) -> u64 {
        let issued_at = now().max(self.state.account_issued_at + 1);
        self.state.account_issued_at = issued_at;
        issued_at
    }

    /// The system account's JWT, with its revocations.
    fn system_account_jwt(&self) -> anyhow::Result<String> {
        let operator = read_seed(&self.dir, OPERATOR_SEED)?;
        Ok(auth::account_jwt(
            &operator,
            &self.state.system,
            "SYS",
            auth::AccountKind::System,
            &self.state.lattice,
            &self.state.system_revocations,
            self.state.account_issued_at,
        )?)
    }

    /// Opens the signing identity in `dir`, as this version of Shoal keeps it.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let authority = Self::read(dir)?;
        if authority.state.clients.is_none() || !dir.join(STORE_KEY).exists() {
            bail!(
                "{} was made by an older Shoal (one account for the lattice's state and its clients): run shoal auth init --dir {} (or shoal up) to upgrade it",
                dir.display(),
                dir.display()
            );
        }
        Ok(authority)
    }

    /// Reads the signing identity in `dir`, however old.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(STATE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: run shoal auth init (or shoal up) first, or pass --dir",
                path.display()
            )
        })?;
        let state: State = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a Shoal auth state", path.display()))?;
        Ok(Self {
            dir: dir.to_owned(),
            state,
        })
    }

    /// The lattice this identity signs for.
    pub fn lattice(&self) -> &str {
        &self.state.lattice
    }

    /// Gives an identity made before lattices had a clients' account one. Every credential
    /// it minted was signed by the state account and would keep reaching the lattice's
    /// state directly: each is revoked, to be minted again (`shoal up` mints its own anew).
    fn add_clients_account(&mut self) -> anyhow::Result<()> {
        let clients = nkeys::KeyPair::new_account();
        write_secret(
            &self.dir.join(CLIENTS_SEED),
            &format!("{}\n", clients.seed()?),
        )?;
        self.state.clients = Some(clients.public_key());
        let issued_at = self.next_issue();
        let mut revoked = 0;
        for minted in &mut self.state.minted {
            if !minted.revoked {
                minted.revoked = true;
                revoked += 1;
            }
            self.state
                .revocations
                .entry(minted.public_key.clone())
                .or_insert(issued_at);
        }
        if revoked > 0 {
            eprintln!(
                "warning: the lattice {:?} now keeps its clients in an account of their own; the {revoked} credential(s) minted before were revoked: mint them again (shoal auth host|user|scheduler|site)",
                self.state.lattice
            );
        }
        Ok(())
    }

    /// The clients' account's public key.
    fn clients(&self) -> anyhow::Result<&str> {
        self.state.clients.as_deref().with_context(|| {
            format!(
                "{} has no clients' account: run shoal auth init",
                self.dir.display()
            )
        })
    }

    /// The state account's JWT, exporting what clients may reach.
    fn state_account_jwt(&self) -> anyhow::Result<String> {
        let operator = read_seed(&self.dir, OPERATOR_SEED)?;
        Ok(auth::account_jwt(
            &operator,
            &self.state.account,
            &self.state.lattice,
            auth::AccountKind::State {
                clients: Some(self.clients()?),
            },
            &self.state.lattice,
            &self.state.revocations,
            self.state.account_issued_at,
        )?)
    }

    /// The clients' account's JWT: importing from the state account, or (`imports`
    /// false, as a site's leaf nats-server preloads it) nothing.
    fn clients_account_jwt(&self, imports: bool) -> anyhow::Result<String> {
        let operator = read_seed(&self.dir, OPERATOR_SEED)?;
        Ok(auth::account_jwt(
            &operator,
            self.clients()?,
            &format!("{}-clients", self.state.lattice),
            auth::AccountKind::Clients {
                state: imports.then_some(self.state.account.as_str()),
                store_signer: Some(&read_seed(&self.dir, STORE_KEY)?.public_key()),
            },
            &self.state.lattice,
            &self.state.revocations,
            self.state.account_issued_at,
        )?)
    }

    /// Writes the state and nats-server's config (the preloaded account JWTs are the
    /// current ones, so a restarted server starts with every revocation).
    fn save(&self) -> anyhow::Result<()> {
        let resolver = format!(
            "resolver: {{\n  type: full\n  dir: \"{}\"\n  allow_delete: false\n  interval: \"2m\"\n}}\n",
            self.dir.join("jwt").display()
        );
        write_secret(
            &self.dir.join(SERVER_CONFIG),
            &self.server_config(&resolver, None)?,
        )?;
        let state = serde_json::to_string_pretty(&self.state)?;
        write_secret(&self.dir.join(STATE), &state)
    }

    /// nats-server's operator-mode config with `resolver` (the preloaded account JWTs are
    /// the current ones, so a restarted server starts with every revocation). A hub's
    /// preloads both of the lattice's accounts; a site's leaf (`site`) the clients' one,
    /// without imports (all it carries goes across the leaf connection), and the account
    /// keeping the site's copy of the components.
    fn server_config(&self, resolver: &str, site: Option<&SiteCopy>) -> anyhow::Result<String> {
        let operator = read_seed(&self.dir, OPERATOR_SEED)?;
        let operator_jwt = auth::operator_jwt(
            &operator,
            "shoal",
            &self.state.system,
            self.state.account_issued_at,
        )?;
        let system_jwt = self.system_account_jwt()?;
        let mut preload = format!(
            "  {clients}: \"{clients_jwt}\"\n  {system}: \"{system_jwt}\"\n",
            clients = self.clients()?,
            clients_jwt = self.clients_account_jwt(site.is_none())?,
            system = self.state.system,
        );
        if let Some(copy) = site {
            preload.push_str(&format!("  {}: \"{}\"\n", copy.account, copy.jwt));
        } else {
            preload.push_str(&format!(
                "  {account}: \"{account_jwt}\"\n",
                account = self.state.account,
                account_jwt = self.state_account_jwt()?,
            ));
        }
        Ok(format!(
            "# Written by shoal auth: the lattice {lattice:?} in operator mode.\n\
             # Credentials carry their permissions: a host's CONNECT line is several KiB.\n\
             max_control_line: 65536\n\
             operator: \"{operator_jwt}\"\n\
             system_account: \"{system}\"\n\
             {resolver}\
             resolver_preload: {{\n{preload}}}\n",
            lattice = self.state.lattice,
            system = self.state.system,
        ))
    }

    /// Writes into `dir` what site `name` needs to reach this lattice through its leaf
    /// (see [`AuthCommand::Site`]).
    pub fn site(
        &mut self,
        name: &str,
        hosts: u16,
        domain: &str,
        copy_bytes: u64,
        dir: &Path,
    ) -> anyhow::Result<()> {
        check_name("site", name)?;
        check_name("JetStream domain", domain)?;
        // The site's credential lists each host's subjects (about 0.9 KiB a host), and
        // nats-server reads it in one control line (64 KiB as `save` configures it).
        if !(1..=MAX_SITE_HOSTS).contains(&hosts) {
            bail!(
                "a site has 1 to {MAX_SITE_HOSTS} hosts (--hosts): its credential lists each host's subjects, and a larger one is more than nats-server reads in a line; split the site in two"
            );
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ids: Vec<String> = (1..=hosts).map(|index| format!("{name}-{index}")).collect();
        for id in &ids {
            // A site's hosts are matched by their site (`placement.requires: {site: NAME}`).
            let grant = shoal_lattice::auth::HostGrant {
                labels: [("site".to_owned(), name.to_owned())].into(),
                ..Default::default()
            };
            let creds = self.mint_in(
                Identity::Host {
                    id: id.clone(),
                    grant,
                },
                Some(domain),
            )?;
            write_secret(&dir.join(format!("{id}.creds")), &creds)?;
        }
        let creds = self.mint(Identity::Site {
            name: name.to_owned(),
            hosts: ids.clone(),
            domain: domain.to_owned(),
        })?;
        write_secret(&dir.join(SITE_CREDS), &creds)?;
        // The leaf has no resolver of its own to ask: the accounts as they stand now. A
        // host revoked later is cut off at the hub; write the site again to cut it at the
        // leaf too.
        let copy = self.site_copy(name, copy_bytes, dir)?;
        write_secret(
            &dir.join(LEAF_CONFIG),
            &self.server_config("resolver: MEMORY\n", Some(&copy))?,
        )?;
        let site = SiteAuth {
            lattice: self.state.lattice.clone(),
            site: name.to_owned(),
            domain: domain.to_owned(),
            account: self.clients()?.to_owned(),
            hosts: ids,
            copy_account: Some(copy.account),
            copy_bytes,
        };
        write_secret(&dir.join(SITE_FILE), &serde_json::to_string_pretty(&site)?)
    }

    /// A new account for site `name`'s copy of the components (at most `copy_bytes`), with
    /// the credentials of its keeper (which makes the copy), its readers (the site's
    /// hosts) and its leaf connection to the hub (which may only mirror the components)
    /// written into `dir`. The account's key is thrown away: the account lives only on the
    /// site's leaf, which preloads its JWT, and a site minted again gets a new one.
    fn site_copy(&mut self, name: &str, copy_bytes: u64, dir: &Path) -> anyhow::Result<SiteCopy> {
        let leaf = self.mint(Identity::SiteCopy {
            name: auth::site_copy_name(name),
        })?;
        write_secret(&dir.join(SITE_COPY_LEAF_CREDS), &leaf)?;
        let operator = read_seed(&self.dir, OPERATOR_SEED)?;
        let account = nkeys::KeyPair::new_account();
        let lattice = &self.state.lattice;
        let jwt = auth::account_jwt(
            &operator,
            &account.public_key(),
            &format!("{lattice}-site-{name}-copy"),
            auth::AccountKind::SiteCopy {
                max_bytes: copy_bytes,
            },
            lattice,
            &BTreeMap::new(),
            now(),
        )?;
        // Its users, signed by its key: the keeper, which makes the copy, and the readers.
        for (file, user, permissions) in [
            (SITE_COPY_CREDS, "keeper", auth::site_copy_keeper(lattice)),
            (
                SITE_COPY_READER_CREDS,
                "reader",
                auth::site_copy_reader(lattice),
            ),
        ] {
            let key = nkeys::KeyPair::new_user();
            let jwt = auth::user_jwt(
                &account,
                &key.public_key(),
                &format!("{name}-copy-{user}"),
                Some(&permissions),
                vec![format!("shoal-kind:site-copy-{user}")],
                now(),
                None,
            )?;
            write_secret(&dir.join(file), &auth::creds(&jwt, &key.seed()?))?;
        }
        Ok(SiteCopy {
            account: account.public_key(),
            jwt,
        })
    }

    /// Mints a credential for `identity` (a name is one kind of identity: a user cannot
    /// take a host's name).
    pub fn mint(&mut self, identity: Identity) -> anyhow::Result<String> {
        self.mint_in(identity, None)
    }

    /// Mints a credential for `identity`, which reaches the lattice's JetStream in `domain`
    /// when one is given.
    fn mint_in(&mut self, identity: Identity, domain: Option<&str>) -> anyhow::Result<String> {
        match &identity {
            Identity::Host { id, .. } => check_host_id(id)?,
            Identity::Scheduler { name } => check_name("scheduler name", name)?,
            Identity::Site { name, hosts, .. } => {
                check_name("site", name)?;
                for id in hosts {
                    check_host_id(id)?;
                }
            }
            Identity::SiteCopy { name } => check_name("site", name)?,
            Identity::User { name, grants } => {
                check_name("user name", name)?;
                if name == auth::ANONYMOUS {
                    bail!("{name:?} is reserved for open lattices");
                }
                for grant in grants {
                    if let Some(namespace) = &grant.namespace {
                        check_name("namespace", namespace)?;
                    }
                }
            }
        }
        if let Some(other) = self
            .state
            .minted
            .iter()
            .find(|minted| minted.identity.name() == identity.name())
            .filter(|minted| minted.identity.kind() != identity.kind())
        {
            bail!(
                "{:?} is already the name of a {}; pick another name",
                identity.name(),
                other.identity.kind()
            );
        }
        // A scheduler belongs to the state account, anyone else to the clients' one.
        let account = read_seed(&self.dir, self.signer_seed(&identity))?;
        let user = nkeys::KeyPair::new_user();
        let issued_at = now();
        let jwt = auth::identity_jwt(
            &account,
            &user.public_key(),
            &self.state.lattice,
            &identity,
            Some(self.clients()?),
            issued_at,
        )?;
        self.state.minted.push(Minted {
            identity,
            public_key: user.public_key(),
            issued_at,
            hub_domain: domain.map(str::to_owned),
            revoked: false,
        });
        self.save()?;
        Ok(auth::creds(&jwt, &user.seed()?))
    }

    /// A credential for `identity` kept in the auth directory's `creds/`, minted on first use
    /// (`shoal up` gives its scheduler and hosts theirs this way).
    pub fn credential_file(&mut self, identity: Identity) -> anyhow::Result<PathBuf> {
        let dir = self.dir.join("creds");
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!("{}-{}.creds", identity.kind(), identity.name()));
        // Minted again when an older version minted it with other permissions (a
        // `responses` permission, say) or other grants; the old one is revoked, so a copy
        // of it left anywhere does not keep what was taken away.
        let existing = std::fs::read_to_string(&path).ok();
        let issuer = read_seed(&self.dir, self.signer_seed(&identity))?.public_key();
        let clients = self.clients()?.to_owned();
        let current = existing.as_deref().is_some_and(|text| {
            shoal_lattice::auth::is_current(
                text,
                &self.state.lattice,
                &identity,
                &issuer,
                Some(&clients),
            )
        });
        if !current {
            if let Some(old) = existing
                .as_deref()
                .and_then(|text| shoal_lattice::auth::holder(text).ok())
            {
                let issued_at = self.next_issue();
                for minted in &mut self.state.minted {
                    if minted.public_key == old.public_key {
                        minted.revoked = true;
                    }
                }
                self.state
                    .revocations
                    .entry(old.public_key)
                    .or_insert(issued_at);
            }
            let creds = self.mint(identity)?;
            write_secret(&path, &creds)?;
        }
        Ok(path)
    }

    /// The seed file of the account that signs `identity`'s credentials.
    fn signer_seed(&self, identity: &Identity) -> &'static str {
        match identity {
            Identity::Scheduler { .. } => ACCOUNT_SEED,
            _ => CLIENTS_SEED,
        }
    }

    /// Marks every credential of `name` revoked and returns the account JWTs to push (both
    /// accounts carry every revocation).
    fn revoke(&mut self, name: &str) -> anyhow::Result<Vec<String>> {
        let keys: Vec<String> = self
            .state
            .minted
            .iter_mut()
            .filter(|minted| minted.identity.name() == name)
            .map(|minted| {
                minted.revoked = true;
                minted.public_key.clone()
            })
            .collect();
        if keys.is_empty() {
            bail!("no credential was minted for {name:?}; shoal auth list shows them");
        }
        let issued_at = self.next_issue();
        for key in keys {
            self.state.revocations.entry(key).or_insert(issued_at);
        }
        self.save()?;
        Ok(vec![
            self.state_account_jwt()?,
            self.clients_account_jwt(true)?,
        ])
    }
}

/// Pushes account JWTs (with their revocations) to nats-server as the system account's user
/// of the auth directory `dir`; `again` names what to run again when the server is away.
async fn push_accounts(
    dir: &Path,
    lattice: &LatticeArgs,
    jwts: &[String],
    again: &str,
) -> anyhow::Result<()> {
    let system = std::fs::read_to_string(dir.join(SYSTEM_CREDS))
        .with_context(|| format!("cannot read {}", dir.join(SYSTEM_CREDS).display()))?;
    for jwt in jwts {
        shoal_lattice::auth::push_account(lattice.url(), &system, jwt)
            .await
            .with_context(|| {
                format!(
                    "the change is saved in {} but nats-server did not take it; run {again} again once it is reachable",
                    dir.display()
                )
            })?;
    }
    Ok(())
}

fn emit(creds: &str, output: Option<&Path>) -> anyhow::Result<()> {
    match output {
        Some(path) => {
            write_secret(path, creds)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{creds}"),
    }
    Ok(())
}

pub async fn run(args: AuthArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let dir = match args.dir {
        Some(dir) => dir,
        None => command_dir()?,
    };
    match args.command {
        AuthCommand::Init => {
            let (authority, created) = Authority::init(&dir, &lattice.lattice)?;
            if created {
                println!(
                    "created the signing identity of lattice {:?} in {}",
                    authority.lattice(),
                    dir.display()
                );
            } else {
                println!(
                    "{} already holds the signing identity of lattice {:?}",
                    dir.display(),
                    authority.lattice()
                );
            }
            println!(
                "nats-server: include {} in its config (by a path relative to that file) and run it with -js",
                dir.join(SERVER_CONFIG).display()
            );
            println!(
                "schedulers: shoal scheduler --secrets-key {} --store-key {} (the same files for each)",
                dir.join(SECRETS_KEY).display(),
                dir.join(STORE_KEY).display()
            );
        }
        AuthCommand::Host {
            id,
            labels,
            memory,
            cpu,
            max_replicas,
            output,
        } => {
            let mut authority = Authority::open(&dir)?;
            let grant = shoal_lattice::auth::HostGrant {
                labels: labels.into_iter().collect(),
                memory: memory.map(|memory| memory.0),
                cpu: cpu.map(|cpu| cpu.0),
                max_replicas,
            };
            let creds = authority.mint(Identity::Host { id, grant })?;
            emit(&creds, output.as_deref())?;
        }
        AuthCommand::Scheduler { name, output } => {
            let mut authority = Authority::open(&dir)?;
            let creds = authority.mint(Identity::Scheduler { name })?;
            emit(&creds, output.as_deref())?;
        }
        AuthCommand::User {
            name,
            role,
            namespaces,
            output,
        } => {
            let mut authority = Authority::open(&dir)?;
            let grants = if namespaces.is_empty() {
                vec![Grant {
                    role,
                    namespace: None,
                }]
            } else {
                namespaces
                    .into_iter()
                    .map(|namespace| Grant {
                        role,
                        namespace: Some(namespace),
                    })
                    .collect()
            };
            let creds = authority.mint(Identity::User { name, grants })?;
            emit(&creds, output.as_deref())?;
        }
        AuthCommand::Revoke { name } => {
            let mut authority = Authority::open(&dir)?;
            let jwts = authority.revoke(&name)?;
            push_accounts(&dir, lattice, &jwts, "this").await?;
            println!("revoked every credential of {name:?}");
        }
        AuthCommand::Presence { expires, revoke } => {
            let mut authority = Authority::open(&dir)?;
            // Recorded before presence.creds is written over, so it can still be withdrawn.
            authority.adopt_presence_file();
            authority.save()?;
            let keep = if revoke {
                None
            } else {
                authority.write_presence_creds(expires)?;
                authority
                    .state
                    .presence
                    .last()
                    .map(|minted| minted.public_key.clone())
            };
            let jwt = authority.revoke_presence(keep.as_deref())?;
            let again = if revoke {
                "shoal auth presence --revoke"
            } else {
                "shoal auth presence"
            };
            push_accounts(&dir, lattice, &[jwt], again).await?;
            if revoke {
                println!("withdrew every presence credential");
            } else {
                println!(
                    "wrote {}; the earlier presence credentials are withdrawn",
                    dir.join(PRESENCE_CREDS).display()
                );
            }
        }
        AuthCommand::Site {
            name,
            hosts,
            domain,
            copy_size,
            output,
        } => {
            let mut authority = Authority::open(&dir)?;
            authority.site(&name, hosts, &domain, copy_size, &output)?;
            println!(
                "wrote the credentials of site {name:?} ({hosts} host(s), hub domain {domain:?}) to {}",
                output.display()
            );
            println!(
                "on the site: shoal up --leaf nats-leaf://HUB:7422 --site {name} --hosts {hosts} --site-auth {}",
                output.display()
            );
        }
        AuthCommand::List => {
            let authority = Authority::open(&dir)?;
            let mut table = crate::commands::get::table(&["NAME", "KIND", "ROLES", "AGE", "STATE"]);
            for minted in &authority.state.minted {
                let roles = match &minted.identity {
                    Identity::User { grants, .. } => grants
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    Identity::Site { hosts, .. } => match hosts.as_slice() {
                        [one] => format!("host {one}"),
                        [first, .., last] => format!("{} hosts: {first} … {last}", hosts.len()),
                        [] => String::new(),
                    },
                    _ => minted
                        .hub_domain
                        .as_ref()
                        .map(|domain| format!("through domain {domain}"))
                        .unwrap_or_default(),
                };
                table.add_row(vec![
                    minted.identity.name().to_owned(),
                    minted.identity.kind().to_owned(),
                    roles,
                    crate::commands::get::age(minted.issued_at * 1000),
                    if minted.revoked { "revoked" } else { "valid" }.to_owned(),
                ]);
            }
            for minted in &authority.state.presence {
                let expired = minted.expires_at.is_some_and(|at| at <= now());
                table.add_row(vec![
                    "presence".to_owned(),
                    "presence".to_owned(),
                    minted
                        .expires_at
                        .map(|at| {
                            format!(
                                "expires {}",
                                humantime::format_rfc3339_seconds(
                                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(at)
                                )
                            )
                        })
                        .unwrap_or_default(),
                    crate::commands::get::age(minted.issued_at * 1000),
                    if minted.revoked {
                        "revoked"
                    } else if expired {
                        "expired"
                    } else {
                        "valid"
                    }
                    .to_owned(),
                ]);
            }
            println!("{table}");
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_site_and_its_hosts_are_kept_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut authority, _) = Authority::init(&dir.path().join("auth"), "dev").unwrap();
        let site = dir.path().join("site");
        authority
            .site("store-12", 2, "hub", 1 << 30, &site)
            .unwrap();
        let again = Authority::open(&dir.path().join("auth")).unwrap();
        let kinds: Vec<(&str, &str, Option<&str>)> = again
            .state
            .minted
            .iter()
            .map(|minted| {
                (
                    minted.identity.name(),
                    minted.identity.kind(),
                    minted.hub_domain.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("store-12-1", "host", Some("hub")),
                ("store-12-2", "host", Some("hub")),
                ("store-12", "site", None),
                ("store-12-copy", "site-copy", None),
            ]
        );
        for file in [
            SITE_FILE,
            SITE_CREDS,
            LEAF_CONFIG,
            SITE_COPY_CREDS,
            SITE_COPY_READER_CREDS,
            SITE_COPY_LEAF_CREDS,
            "store-12-1.creds",
            "store-12-2.creds",
        ] {
            assert!(site.join(file).is_file(), "{file}");
        }
        // The leaf preloads the account keeping the site's copy, which the site names.
        let written: SiteAuth =
            serde_json::from_str(&std::fs::read_to_string(site.join(SITE_FILE)).unwrap()).unwrap();
        let copy = written.copy_account.expect("a copy account");
        assert_eq!(written.copy_bytes, 1 << 30);
        let leaf = std::fs::read_to_string(site.join(LEAF_CONFIG)).unwrap();
        assert!(leaf.contains(&copy));
        let keeper =
            auth::holder(&std::fs::read_to_string(site.join(SITE_COPY_CREDS)).unwrap()).unwrap();
        assert_eq!(keeper.issuer, copy);
    }

    #[test]
    fn an_identity_from_before_the_clients_account_gets_one_and_revokes_what_it_minted() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth");
        let (mut authority, _) = Authority::init(&auth, "dev").unwrap();
        let host = Identity::Host {
            id: "edge-1".to_owned(),
            grant: auth::HostGrant::default(),
        };
        let old = authority.credential_file(host.clone()).unwrap();
        let old_key = auth::holder(&std::fs::read_to_string(&old).unwrap())
            .unwrap()
            .public_key;
        // As an older version wrote it: one account, which signed every credential.
        let mut state: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(auth.join(STATE)).unwrap()).unwrap();
        state.as_object_mut().unwrap().remove("clients");
        std::fs::write(auth.join(STATE), state.to_string()).unwrap();
        std::fs::remove_file(auth.join(CLIENTS_SEED)).unwrap();

        std::fs::remove_file(auth.join(STORE_KEY)).unwrap();
        let refused = Authority::open(&auth).err().unwrap().to_string();
        assert!(refused.contains("shoal auth init"), "{refused}");
        let (mut authority, created) = Authority::init(&auth, "dev").unwrap();
        assert!(!created);
        assert!(auth.join(STORE_KEY).is_file());
        let clients = authority.clients().unwrap().to_owned();
        assert_ne!(clients, authority.state.account);
        assert!(authority.state.revocations.contains_key(&old_key));
        assert!(authority.state.minted.iter().all(|minted| minted.revoked));
        // Minted again, by the clients' account; a scheduler still by the state account,
        // naming the clients'.
        let again = authority.credential_file(host).unwrap();
        let holder = auth::holder(&std::fs::read_to_string(again).unwrap()).unwrap();
        assert_ne!(holder.public_key, old_key);
        assert_eq!(holder.issuer, clients);
        let scheduler = authority
            .mint(Identity::Scheduler {
                name: "s1".to_owned(),
            })
            .unwrap();
        let holder = auth::holder(&scheduler).unwrap();
        assert_eq!(holder.issuer, authority.state.account);
        assert_eq!(holder.clients_account, Some(clients.clone()));
        // nats-server preloads both accounts; a site's leaf only the clients'.
        let config = std::fs::read_to_string(auth.join(SERVER_CONFIG)).unwrap();
        assert!(config.contains(&clients) && config.contains(&authority.state.account));
        let copy = SiteCopy {
            account: "ACOPY".to_owned(),
            jwt: "copy-jwt".to_owned(),
        };
        let leaf = authority
            .server_config("resolver: MEMORY\n", Some(&copy))
            .unwrap();
        assert!(leaf.contains(&clients) && !leaf.contains(&authority.state.account));
        assert!(leaf.contains("ACOPY: \"copy-jwt\""));
    }
}

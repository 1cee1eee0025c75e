//! What a guest gets: WASI 0.2 with nothing inherited, explicit grants, and outbound HTTP only
//! to an allowlist. Also the per-store state and the epoch callback that enforces timeouts and
//! CPU quotas.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::engine::EPOCH_TICK;
use crate::error::{HostError, TimedOut};
use crate::limits::{CpuQuota, Limits, MemoryCap};
use crate::outbound::AddressPolicy;
use crate::output::GuestOutput;
use shoal_lattice::Output;

/// A directory granted to the guest.
#[derive(Debug, Clone)]
pub struct DirGrant {
    /// Path on the host.
    pub host: PathBuf,
    /// Path the guest sees.
    pub guest: String,
    /// Whether the guest may write.
    pub writable: bool,
}

impl std::str::FromStr for DirGrant {
    type Err = String;

    /// `HOST:GUEST` (read-only) or `HOST:GUEST:rw`; `HOST` alone maps to the same path.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = value.split(':').collect();
        let (host, guest, writable) = match parts.as_slice() {
            [host] => (*host, *host, false),
            [host, guest] => (*host, *guest, false),
            [host, guest, "rw"] => (*host, *guest, true),
            [host, guest, "ro"] => (*host, *guest, false),
            _ => return Err(format!("{value:?} is not HOST:GUEST or HOST:GUEST:rw")),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(format!("{value:?} has an empty path"));
        }
        Ok(Self {
            host: PathBuf::from(host),
            guest: guest.to_owned(),
            writable,
        })
    }
}

/// Outbound HTTP destinations a guest may reach: `scheme://host[:port]`, with `*.` for any
/// subdomain. An entry without a port allows only the scheme's default port (80, 443).
/// Empty means none.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Vec<AllowedOrigin>,
    addresses: Arc<AddressPolicy>,
}

#[derive(Debug, Clone)]
struct AllowedOrigin {
    scheme: String,
    host: String,
    port: Option<u16>,
}

impl OutboundPolicy {
    /// Parses allowlist entries like `https://api.example.com` or `http://*.internal:8080`.
    ///
    /// # Errors
    /// An entry that is not `scheme://host[:port]`.
    pub fn new(entries: &[String]) -> Result<Self, String> {
        let allowed = entries
            .iter()
            .map(|entry| {
                let uri: http::Uri = entry
                    .replace("*.", "wildcard.")
                    .parse()
                    .map_err(|error| format!("{entry:?} is not a URL: {error}"))?;
                let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
                    return Err(format!(
                        "{entry:?} needs a scheme and a host, like https://api.example.com"
                    ));
                };
                Ok(AllowedOrigin {
                    scheme: scheme.to_ascii_lowercase(),
                    host: host.to_ascii_lowercase().replacen("wildcard.", "*.", 1),
                    port: uri.port_u16(),
                })
            })
            .collect::<Result<Vec<AllowedOrigin>, _>>()?;
        let named = allowed
            .iter()
            .filter_map(|origin| {
                origin
                    .host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse()
                    .ok()
            })
            .collect();
        Ok(Self {
            allowed,
            addresses: Arc::new(AddressPolicy {
                named,
                own: Vec::new(),
            }),
        })
    }

    /// Keeps the literally named addresses in special ranges (loopback, private,
    /// link-local, …) only where one of `ranges` (the lattice's egress policy, CIDRs) holds
    /// them: in a lattice, an app's allowlist alone never opens the host's networks or the
    /// cloud metadata address. `shoal run` (the developer's own machine) does not call this.
    pub fn within_private_ranges(mut self, ranges: &[String]) -> Self {
        let ranges: Vec<ipnet::IpNet> = ranges
            .iter()
            .filter_map(|range| range.parse().ok())
            .collect();
        let named = self
            .addresses
            .named
            .iter()
            .copied()
            .filter(|address| {
                !crate::outbound::special(*address)
                    || ranges.iter().any(|range| range.contains(address))
            })
            .collect();
        self.addresses = Arc::new(AddressPolicy {
            named,
            own: self.addresses.own.clone(),
        });
        self
    }

    /// Refuses this host's own listeners (ingress, metrics, NATS) unless an entry names
    /// their address literally.
    pub fn with_own_listeners(mut self, own: Vec<std::net::SocketAddr>) -> Self {
        self.addresses = Arc::new(AddressPolicy {
            named: self.addresses.named.clone(),
            own: crate::outbound::expand_unspecified(&own),
        });
        self
    }

    /// Whether a request to `uri` may go out.
    pub fn allows(&self, uri: &http::Uri) -> bool {
        let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
            return false;
        };
        let host = host.to_ascii_lowercase();
        self.allowed.iter().any(|origin| {
            origin.scheme.eq_ignore_ascii_case(scheme)
                && match origin.host.strip_prefix("*.") {
                    Some(domain) => host.ends_with(&format!(".{domain}")),
                    None => origin.host == host,
                }
                && origin.port.or_else(|| default_port(&origin.scheme))
                    == uri.port_u16().or_else(|| default_port(scheme))
        })
    }
}

/// The port a URL of `scheme` means when it names none.
fn default_port(scheme: &str) -> Option<u16> {
    if scheme.eq_ignore_ascii_case("https") {
        Some(443)
    } else if scheme.eq_ignore_ascii_case("http") {
        Some(80)
    } else {
        None
    }
}

/// What every instance of a replica is given.
#[derive(Debug, Clone, Default)]
pub struct GuestOptions {
    /// Environment variables (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// What the guest reads through `wasi:config/store`.
    pub config: crate::config::ConfigValues,
    /// The key-value stores the guest may open through `wasi:keyvalue` (none: every open
    /// is `access-denied`).
    pub stores: Option<crate::keyvalue::StoresLink>,
    /// Where the guest publishes through `wasi:messaging` (none: every send is
    /// `permission-denied`).
    pub publisher: Option<crate::messaging::PublisherLink>,
    /// Directories granted.
    pub dirs: Vec<DirGrant>,
    /// Outbound HTTP allowlist.
    pub outbound: OutboundPolicy,
    /// Arguments, for commands (the first is the program name).
    pub args: Vec<String>,
    /// A name for logs: the file or reference.
    pub name: String,
    /// Other apps of the lattice, reachable as `http://<app>[.<namespace>]`.
    pub services: Option<ServiceLink>,
    /// Where stdout and stderr lines go; `None` writes them to the host's own.
    pub output: Option<GuestOutput>,
}

/// How a guest reaches other apps by name: `http://<app>` or `http://<app>.<namespace>`
/// goes through the lattice (a local replica first), never to DNS, and needs no
/// `allowedOutbound` entry.
pub trait Services: Send + Sync + 'static {
    /// The (namespace, app) a request to `uri` is for, when its host names an app.
    fn resolve(&self, uri: &http::Uri) -> Option<(String, String)>;

    /// Sends `request` to a ready replica of `namespace/app`.
    fn call(
        &self,
        namespace: String,
        app: String,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<wasmtime_wasi_http::WasiBody>> + Send>>;
}

/// A shared [`Services`] in [`GuestOptions`].
#[derive(Clone)]
pub struct ServiceLink(pub Arc<dyn Services>);

impl std::fmt::Debug for ServiceLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceLink")
    }
}

impl GuestOptions {
    /// Checks the grants before anything runs, so a typo fails at startup, not per request.
    ///
    /// # Errors
    /// [`HostError::Dir`] for a directory that does not exist.
    pub fn validate(&self) -> Result<(), HostError> {
        for dir in &self.dirs {
            if !dir.host.is_dir() {
                return Err(HostError::Dir {
                    path: dir.host.clone(),
                    reason: "not a directory".into(),
                });
            }
        }
        Ok(())
    }

    fn wasi(&self, inherit_stdio: bool) -> Result<WasiCtx, HostError> {
        let mut builder = WasiCtxBuilder::new();
        if inherit_stdio {
            builder.inherit_stdio();
        } else if let Some(output) = &self.output {
            builder
                .stdout(output.stream(Output::Stdout))
                .stderr(output.stream(Output::Stderr));
        } else {
            builder.inherit_stdout().inherit_stderr();
        }
        builder.envs(&self.env);
        builder.args(&self.args);
        for dir in &self.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            builder
                .preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|error| HostError::Dir {
                    path: dir.host.clone(),
                    reason: format!("{error:#}"),
                })?;
        }
        Ok(builder.build())
    }
}

/// Checks outbound requests against the allowlist before the default client sends them.
struct Hooks {
    outbound: OutboundPolicy,
    name: Arc<str>,
    services: Option<ServiceLink>,
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        if let Some(services) = &self.services
            && let Some((namespace, app)) = services.0.resolve(request.uri())
        {
            let call = services.0.call(namespace, app, request);
            return Box::new(async move {
                let response = call.await;
                Ok((
                    response,
                    Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
                ))
            });
        }
        if !self.outbound.allows(request.uri()) {
            tracing::warn!(component = %self.name, uri = %request.uri(), "outbound request refused: not in the allowed outbound list");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        let _ = fut;
        let addresses = Arc::clone(&self.outbound.addresses);
        Box::new(crate::outbound::send(request, options, addresses))
    }
}

/// The data of one `Store`: one request's (or one run's) instance.
pub struct GuestState {
    wasi: WasiCtx,
    config: crate::config::ConfigValues,
    stores: Option<crate::keyvalue::StoresLink>,
    publisher: Option<crate::messaging::PublisherLink>,
    /// The reply subject of the wasmCloud message being handled.
    answering: Option<crate::messaging::ReplyTo>,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: Hooks,
    memory: MemoryCap,
    deadline: Instant,
    cpu: Option<Arc<CpuQuota>>,
    timed_out: bool,
}

impl GuestState {
    /// Whether the guest tried to grow memory past its cap.
    pub fn out_of_memory(&self) -> bool {
        self.memory.exceeded()
    }

    /// Whether the epoch callback stopped the guest for running past its deadline.
    pub fn timed_out(&self) -> bool {
        self.timed_out
    }

    /// Moves the store's deadline to `timeout` from now, if that is later (an instance
    /// that serves several requests at once runs until its newest one's deadline).
    pub(crate) fn extend_deadline(&mut self, timeout: std::time::Duration) {
        self.deadline = self.deadline.max(deadline_after(timeout));
    }
}

impl crate::config::HasConfigValues for GuestState {
    fn config_values(&self) -> &std::collections::BTreeMap<String, String> {
        &self.config
    }
}

impl crate::keyvalue::HasStores for GuestState {
    fn kv(&mut self) -> crate::keyvalue::KvView<'_> {
        crate::keyvalue::KvView::new(&mut self.table, self.stores.as_ref())
    }
}

impl crate::messaging::HasMessaging for GuestState {
    fn messaging(&mut self) -> crate::messaging::MessagingView<'_> {
        crate::messaging::MessagingView::new(
            &mut self.table,
            self.publisher.as_ref(),
            &mut self.answering,
        )
    }
}

impl WasiView for GuestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GuestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// The instant `timeout` from now, or a year from now for a timeout beyond what `Instant`
/// can hold (no timeout a replica is given is that long).
fn deadline_after(timeout: std::time::Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(std::time::Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

/// The epoch ticks until the callback first runs: every tick with a CPU quota (it charges
/// the quota); without one, nothing needs to run until the deadline.
fn first_epoch_deadline(limits: &Limits, cpu: bool) -> u64 {
    if cpu {
        return 1;
    }
    let ticks_to_deadline = (limits.timeout.as_millis() / EPOCH_TICK.as_millis()).max(1);
    u64::try_from(ticks_to_deadline).unwrap_or(u64::MAX)
}

/// Readies a kept instance's store for its next request (`limits.instanceReuse`): a new
/// deadline and no timeout or memory flag from the last one.
pub(crate) fn rearm(store: &mut Store<GuestState>, limits: &Limits) {
    let state = store.data_mut();
    state.deadline = deadline_after(limits.timeout);
    state.timed_out = false;
    state.memory.clear();
    let cpu = state.cpu.is_some();
    store.set_epoch_deadline(first_epoch_deadline(limits, cpu));
    set_fuel(store, limits);
}

/// Gives the store its request's fuel budget, when it has one (an engine that does not
/// count fuel refuses, and has no budget to give).
fn set_fuel(store: &mut Store<GuestState>, limits: &Limits) {
    if let Some(fuel) = limits.fuel {
        let _ = store.set_fuel(fuel);
    }
}

/// Builds a fresh store with the replica's limits: memory cap, deadline, CPU quota.
///
/// # Errors
/// [`HostError::Dir`] when a granted directory cannot be opened.
pub fn new_store(
    engine: &Engine,
    options: &GuestOptions,
    limits: &Limits,
    cpu: Option<&Arc<CpuQuota>>,
    inherit_stdin: bool,
) -> Result<Store<GuestState>, HostError> {
    let state = GuestState {
        wasi: options.wasi(inherit_stdin)?,
        config: Arc::clone(&options.config),
        stores: options.stores.clone(),
        publisher: options.publisher.clone(),
        answering: None,
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        hooks: Hooks {
            outbound: options.outbound.clone(),
            name: Arc::from(options.name.as_str()),
            services: options.services.clone(),
        },
        memory: MemoryCap::new(limits.memory),
        deadline: deadline_after(limits.timeout),
        cpu: cpu.cloned(),
        timed_out: false,
    };
    let mut store = Store::new(engine, state);
    store.limiter(|state| &mut state.memory);
    set_fuel(&mut store, limits);
    store.set_epoch_deadline(first_epoch_deadline(limits, cpu.is_some()));
    store.epoch_deadline_callback(|mut context| {
        let now = Instant::now();
        let state = context.data_mut();
        if now >= state.deadline {
            state.timed_out = true;
            return Err(wasmtime::Error::new(TimedOut));
        }
        let Some(cpu) = &state.cpu else {
            let left = state.deadline.saturating_duration_since(now);
            let ticks = (left.as_millis() / EPOCH_TICK.as_millis()).max(1);
            return Ok(UpdateDeadline::Continue(u64::try_from(ticks).unwrap_or(1)));
        };
        match cpu.charge(EPOCH_TICK, now) {
            None => Ok(UpdateDeadline::Continue(1)),
            Some(until) => {
                // Throttled: wait for the next period, but never past the deadline.
                let until = until.min(state.deadline);
                Ok(UpdateDeadline::YieldCustom(
                    1,
                    Box::pin(tokio::time::sleep_until(until.into())),
                ))
            }
        }
    });
    Ok(store)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uri(value: &str) -> http::Uri {
        value.parse().unwrap()
    }

    #[test]
    fn a_named_special_address_needs_the_lattice_s_egress_policy() {
        let entries = [
            "http://169.254.169.254".to_owned(),
            "http://10.1.2.3:9000".to_owned(),
            "http://127.0.0.1:8080".to_owned(),
            "http://93.184.216.34".to_owned(),
        ];
        let address = |text: &str| -> std::net::SocketAddr { text.parse().unwrap() };
        // No policy: a public address named literally is reachable, special ones are not.
        let policy = OutboundPolicy::new(&entries)
            .unwrap()
            .within_private_ranges(&[]);
        assert!(policy.addresses.permits(address("93.184.216.34:80")));
        for refused in ["169.254.169.254:80", "10.1.2.3:9000", "127.0.0.1:8080"] {
            assert!(!policy.addresses.permits(address(refused)), "{refused}");
        }
        // The admin opens 10.1.0.0/16: that one, and only that one.
        let policy = OutboundPolicy::new(&entries)
            .unwrap()
            .within_private_ranges(&["10.1.0.0/16".to_owned(), "not a range".to_owned()]);
        assert!(policy.addresses.permits(address("10.1.2.3:9000")));
        assert!(!policy.addresses.permits(address("10.2.0.1:9000")));
        assert!(!policy.addresses.permits(address("169.254.169.254:80")));
        // Without the policy step (shoal run): named literally is enough.
        let policy = OutboundPolicy::new(&entries).unwrap();
        assert!(policy.addresses.permits(address("127.0.0.1:8080")));
    }

    #[test]
    fn outbound_policy_matches_scheme_host_port_and_wildcards() {
        let policy = OutboundPolicy::new(&[
            "https://api.example.com".into(),
            "http://*.internal:8080".into(),
        ])
        .unwrap();
        assert!(policy.allows(&uri("https://api.example.com/v1/users")));
        assert!(policy.allows(&uri("https://API.example.com:443/")));
        assert!(!policy.allows(&uri("http://api.example.com/")));
        assert!(!policy.allows(&uri("https://evil.com/?api.example.com")));
        assert!(policy.allows(&uri("http://users.internal:8080/")));
        assert!(!policy.allows(&uri("http://users.internal:9090/")));
        assert!(!policy.allows(&uri("http://internal:8080/")));
        // No port in the entry: the scheme's default port only.
        assert!(!policy.allows(&uri("https://api.example.com:8443/")));
        assert!(!policy.allows(&uri("https://api.example.com:22/")));
        let policy = OutboundPolicy::new(&["http://localhost".into()]).unwrap();
        assert!(policy.allows(&uri("http://localhost:80/")));
        assert!(!policy.allows(&uri("http://localhost:4222/")));
        assert!(!OutboundPolicy::default().allows(&uri("https://api.example.com/")));
        assert!(OutboundPolicy::new(&["api.example.com".into()]).is_err());
    }

    #[test]
    fn dir_grants_parse() {
        let grant: DirGrant = "/srv/data:/data:rw".parse().unwrap();
        assert!(grant.writable);
        assert_eq!(grant.guest, "/data");
        let grant: DirGrant = "/srv/data:/data".parse().unwrap();
        assert!(!grant.writable);
        assert!("/a:/b:rx".parse::<DirGrant>().is_err());
    }
}

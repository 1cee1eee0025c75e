//! Credentials for apps' key-value stores. On a secure lattice a host's own credential
//! reaches no app's store: each assignment of an app with stores carries one, minted here
//! for that host and that app's buckets only, sealed to the host's secrets key, and written
//! again with a fresh one before it expires. A host that loses the assignment keeps what it
//! was given until then, and no longer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_lattice::Lattice;
use shoal_lattice::auth::StoreSigner;
use shoal_lattice::records::{AppSpec, HostRecord, STORE_CREDENTIAL};
use shoal_lattice::secrets::{Sealed, SecretValues, XKey};

use super::plan::{Op, Plan, Rewrite};
use super::{PassView, Renewal, State};

/// What a scheduler mints store credentials with.
#[derive(Debug, Clone)]
pub struct StoreMinter {
    /// A signing key of the clients' account.
    pub signer: Arc<StoreSigner>,
    /// The clients' account.
    pub clients_account: String,
    /// How long a credential lasts; it is renewed when less than half is left.
    pub lifetime: Duration,
}

/// The default lifetime of a store credential: how long a host that lost an assignment
/// (or its credential, stolen) may still reach that app's stores.
pub const LIFETIME: Duration = Duration::from_secs(3600);

/// What an assignment of app `namespace/app` (its template's `stores`) to host `host_id`
/// (whose record, read at that id's key, is `host`: the id inside it is the host's word and
/// is not used) carries:
/// the sealed credential and when it expires, or `None` when it needs none (no stores, or
/// an open lattice, where hosts reach stores with their own connection). `Err` says why it
/// cannot be given; the replica is then not placed.
/// Who gives store credentials in a pass: the minter, whether the lattice is secure, the
/// key credentials are sealed with (the lattice's secrets key), the lattice's name.
#[derive(Clone, Copy)]
pub(super) struct Issuer<'a> {
    pub(super) minter: Option<&'a StoreMinter>,
    pub(super) secure: bool,
    pub(super) sealer: Option<&'a XKey>,
    pub(super) lattice: &'a str,
}

impl<'a> Issuer<'a> {
    /// The issuer of a pass that sees `observed`, sealing with `state`'s secrets key.
    pub(super) fn of(observed: &PassView<'a>, state: &'a State) -> Self {
        Self {
            minter: observed.stores,
            secure: observed.secure,
            sealer: state.secrets_key.as_ref(),
            lattice: observed.lattice,
        }
    }
}

pub(super) fn access_for(
    Issuer {
        minter,
        secure,
        sealer,
        lattice,
    }: Issuer<'_>,
    (namespace, app): (&str, &str),
    template: &AppSpec,
    (host_id, host): (&str, Option<&HostRecord>),
    now_secs: u64,
) -> Result<Option<(Sealed, u64)>, String> {
    if !template.needs_app_credential() || !secure {
        return Ok(None);
    }
    let stores: Vec<String> = template
        .key_value
        .iter()
        .map(|store| store.name.clone())
        .collect();
    let Some(minter) = minter else {
        return Err(
            "the scheduler has no store key to give hosts access to the app's key-value stores (shoal scheduler --store-key FILE; shoal auth init writes stores.nk)"
                .to_owned(),
        );
    };
    let Some(sealer) = sealer else {
        return Err(
            "the scheduler has no secrets key to seal the app's store credential with (shoal scheduler --secrets-key FILE)"
                .to_owned(),
        );
    };
    let host = host.ok_or("the host is unknown")?;
    let recipient = host
        .secrets_key
        .as_deref()
        .ok_or("the host has no secrets key to receive the app's store credential")?;
    let expires = now_secs + minter.lifetime.as_secs().max(2);
    let credential = shoal_lattice::auth::store_credential(
        &minter.signer,
        &minter.clients_account,
        lattice,
        host_id,
        shoal_lattice::auth::AppGrants {
            namespace,
            app,
            stores: &stores,
            publish: &template.publish,
            triggers: &template.triggers,
        },
        now_secs,
        expires,
    )
    .map_err(|error| error.to_string())?;
    let sealed = SecretValues::new([(STORE_CREDENTIAL.to_owned(), credential)].into())
        .seal(sealer, recipient)
        .map_err(|error| error.to_string())?;
    Ok(Some((sealed, expires)))
}

/// Whether a credential that expires at `expires` (seconds) and lasts `lifetime` is due to
/// be renewed at `now_secs`: less than half of it is left.
pub(super) fn due(expires: u64, lifetime: Duration, now_secs: u64) -> bool {
    expires.saturating_sub(now_secs) < lifetime.as_secs().max(2) / 2
}

/// Writes again, with a fresh credential, each assignment on a live host whose store
/// credential is due, or that has stores and none; fenced like every write of a pass.
pub(super) async fn renew(lattice: &Lattice, state: &mut State, minter: Option<&StoreMinter>) {
    let now = Instant::now();
    let plan = plan_renewals(state, minter, lattice.name(), now);
    if let Some(error) = super::plan::apply(lattice, state, plan, now).await.stopped {
        // Someone wrote since this pass's view: the next pass renews from what is there.
        // The rest of this pass (cron jobs, health) goes on.
        tracing::debug!(error = %shoal_lattice::Chain(&error), "a store credential renewal lost to a newer write");
    }
}

/// Plans the renewals due at `now` (looked for at most once a second).
pub(super) fn plan_renewals(
    state: &mut State,
    minter: Option<&StoreMinter>,
    lattice: &str,
    now: Instant,
) -> Plan {
    let mut plan = Plan::default();
    let Some(minter) = minter else {
        return plan;
    };
    // Credentials last at least seconds: looking once a second is enough, and spares the
    // passes in between (every change or 200 ms) a copy of every assignment.
    if state
        .stores_checked
        .is_some_and(|at| now.duration_since(at) < CHECK_EVERY)
    {
        return plan;
    }
    state.stores_checked = Some(now);
    let now_secs = shoal_lattice::records::now_millis() / 1000;
    let live = state.live_hosts.clone().unwrap_or_default();
    let assignments = state.assignments.snapshot();
    let revisions: HashMap<&str, u64> = assignments
        .iter()
        .map(|record| (record.key.as_str(), record.revision))
        .collect();
    // A renewal written is remembered until the mirror shows it, and one that failed for a
    // while, so the passes in between do not repeat it.
    state.store_renewals.retain(|key, renewal| {
        now.duration_since(renewal.at) < RETRY_AFTER
            && revisions
                .get(key.as_str())
                .is_some_and(|revision| *revision < renewal.written)
    });
    let due: Vec<_> = assignments
        .into_iter()
        .filter(|record| {
            live.contains(&record.value.host)
                && !state.store_renewals.contains_key(&record.key)
                && match record.value.store_access_expires {
                    Some(expires) => due(expires, minter.lifetime, now_secs),
                    // Assigned before store credentials existed (or by a scheduler without
                    // a store key): given one now.
                    None => record.value.template.needs_app_credential(),
                }
        })
        .collect();
    for record in due {
        let mut renewed = record.value.clone();
        let issuer = Issuer {
            minter: Some(minter),
            secure: true,
            sealer: state.secrets_key.as_ref(),
            lattice,
        };
        let access = access_for(
            issuer,
            (&renewed.namespace, &renewed.app),
            &renewed.template,
            (
                &renewed.host,
                state
                    .hosts
                    .get(&renewed.host)
                    .map(|host| host.value)
                    .as_ref(),
            ),
            now_secs,
        );
        match access {
            Ok(Some((sealed, expires))) => {
                renewed.store_access = Some(sealed);
                renewed.store_access_expires = Some(expires);
            }
            Ok(None) => continue,
            Err(why) => {
                tracing::warn!(key = %record.key, %why, "cannot renew a store credential; trying again in 30 s");
                state.store_renewals.insert(
                    record.key.clone(),
                    Renewal {
                        written: record.revision + 1,
                        at: now,
                    },
                );
                continue;
            }
        }
        plan.push(Op::Rewrite {
            key: record.key,
            value: Box::new(renewed),
            revision: record.revision,
            why: Rewrite::RenewStoreCredential,
        });
    }
    plan
}

/// How long a renewal written (or failed) is not tried again while the mirror does not
/// show a newer assignment.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// How often the leader looks for credentials due.
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_is_renewed_once_less_than_half_its_life_is_left() {
        let hour = Duration::from_secs(3600);
        assert!(!due(10_000 + 3600, hour, 10_000));
        assert!(!due(10_000 + 1801, hour, 10_000));
        assert!(due(10_000 + 1799, hour, 10_000));
        assert!(due(10_000, hour, 10_000));
        assert!(due(5, hour, 10_000), "expired");
    }

    #[test]
    fn a_credential_names_the_host_it_is_assigned_to_not_the_id_its_record_claims() {
        let host_key = shoal_lattice::secrets::new_key();
        // h9's record (at key h9) claims to be h1.
        let record: HostRecord = serde_json::from_value(serde_json::json!({
            "id": "h1", "version": "0", "startedAt": 0, "heartbeatAt": 0,
            "labels": {}, "capacity": {"memory": "1Gi", "cpu": "1", "maxReplicas": 1},
            "secretsKey": host_key.public_key()
        }))
        .unwrap();
        let minter = StoreMinter {
            signer: Arc::new(StoreSigner::generate()),
            clients_account: "ACLIENTS".to_owned(),
            lifetime: LIFETIME,
        };
        let sealer = shoal_lattice::secrets::new_key();
        let issuer = Issuer {
            minter: Some(&minter),
            secure: true,
            sealer: Some(&sealer),
            lattice: "dev",
        };
        let (sealed, expires) = access_for(
            issuer,
            ("team-a", "shop"),
            &with_stores(),
            ("h9", Some(&record)),
            1000,
        )
        .unwrap()
        .unwrap();
        assert_eq!(expires, 1000 + LIFETIME.as_secs());
        let opened = sealed.open(&host_key).unwrap();
        let creds = opened.values().get(STORE_CREDENTIAL).unwrap();
        let holder = shoal_lattice::auth::holder(creds).unwrap();
        assert_eq!(holder.name, "h9/team-a/shop");
        assert!(
            holder
                .inbox_prefix
                .is_some_and(|prefix| prefix.starts_with("_INBOX.stores.h9."))
        );
    }

    /// A spec granting the store `cache`.
    fn with_stores() -> AppSpec {
        let mut spec = AppSpec::of_workload(Default::default());
        spec.key_value = serde_json::from_value(serde_json::json!([{"name": "cache"}])).unwrap();
        spec
    }

    #[test]
    fn only_a_secure_lattice_s_app_with_stores_needs_one_and_says_why_it_cannot_have_it() {
        let stores = with_stores();
        let open = Issuer {
            minter: None,
            secure: false,
            sealer: None,
            lattice: "dev",
        };
        let secure = Issuer {
            secure: true,
            ..open
        };
        let host = ("h1", None);
        assert_eq!(access_for(open, ("a", "b"), &stores, host, 1), Ok(None));
        let nothing = shoal_lattice::records::AppSpec::of_workload(Default::default());
        assert_eq!(access_for(secure, ("a", "b"), &nothing, host, 1), Ok(None));
        let why = access_for(secure, ("a", "b"), &stores, host, 1).unwrap_err();
        assert!(why.contains("--store-key"), "{why}");
        // Subjects to publish to need one as stores do.
        let mut publishing = nothing;
        publishing.publish = vec!["alerts.>".to_owned()];
        assert!(access_for(secure, ("a", "b"), &publishing, host, 1).is_err());
    }
}

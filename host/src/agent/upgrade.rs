//! A fleet upgrade on this host: on each heartbeat the agent reads the order the control
//! plane left for it (`upgrades.<host>`), has the binary prepared (pulled, checked by
//! digest and signature) by the [`Upgrader`] the `shoal` binary gives, and then ends its run
//! so the binary can restart into the new one. What the host tells of it goes in its record
//! ([`UpgradeReport`]); an upgrade that failed here (including one the binary rolled back)
//! is never tried again: a new upgrade must be started.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use shoal_lattice::fleet::{ReportPhase, UpgradeOrder, UpgradeReport};
use shoal_lattice::names::upgrade_order_key;
use shoal_lattice::{Bucket, Lattice, Validate};
use tokio::sync::mpsc;

/// What prepares a new binary for this host.
pub trait Upgrader: Send + Sync + 'static {
    /// Pulls the order's binary, checks it against the order's digest and its manifest's
    /// signature against the order's trusted keys, and puts it where it can run.
    ///
    /// # Errors
    /// What went wrong, for the host's record.
    fn prepare(
        &self,
        order: UpgradeOrder,
    ) -> Pin<Box<dyn Future<Output = Result<PathBuf, String>> + Send>>;

    /// The digest of the binary this host runs (`sha256:…`), read when an order first
    /// comes (reading a large binary at every start would cost every host for nothing).
    fn identify(&self) -> Pin<Box<dyn Future<Output = Option<String>> + Send>>;
}

/// A binary ready to run in this host's place.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The order it answers.
    pub order: UpgradeOrder,
    /// Where it is.
    pub path: PathBuf,
}

/// How the agent's run ended.
#[derive(Debug)]
pub enum Stopped {
    /// It was told to stop.
    Shutdown,
    /// It left to make way for a new binary: the caller starts it.
    Upgrade(Prepared),
}

/// This host's side of upgrades, as the agent keeps it.
pub(super) struct Upgrades {
    upgrader: Option<Arc<dyn Upgrader>>,
    /// What the record tells.
    report: Arc<Mutex<Option<UpgradeReport>>>,
    /// Whether a binary is being prepared.
    preparing: bool,
    /// The running binary's digest, once known.
    binary: Arc<std::sync::OnceLock<String>>,
    identifying: bool,
    /// Whether the host holds a credential: only then is an order the control plane's.
    secure: bool,
    prepared: mpsc::Sender<Result<Prepared, (UpgradeOrder, String)>>,
}

impl Upgrades {
    pub(super) fn new(
        secure: bool,
        upgrader: Option<Arc<dyn Upgrader>>,
        binary: Arc<std::sync::OnceLock<String>>,
        report: Arc<Mutex<Option<UpgradeReport>>>,
        prepared: mpsc::Sender<Result<Prepared, (UpgradeOrder, String)>>,
    ) -> Self {
        Self {
            upgrader,
            report,
            preparing: false,
            binary,
            identifying: false,
            secure,
            prepared,
        }
    }

    /// Reads this host's order and starts preparing it when it is new to this host and its
    /// binary is not the one running.
    pub(super) async fn check(&mut self, lattice: &Lattice, host: &str) {
        if self.preparing {
            return;
        }
        let order = match lattice
            .get::<UpgradeOrder>(Bucket::Status, &upgrade_order_key(host))
            .await
        {
            Ok(Some(order)) => order.value,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(error = %shoal_lattice::Chain(&error), "cannot read this host's upgrade order");
                return;
            }
        };
        if let Err(invalid) = order.validate() {
            tracing::warn!(%invalid, "ignoring an upgrade order that is not valid");
            return;
        }
        let tried = self.report.lock().ok().and_then(|report| {
            report.as_ref().map(|report| {
                report.upgrade == order.upgrade && report.phase == ReportPhase::Failed
            })
        });
        if tried == Some(true) {
            return;
        }
        let upgrader = match &self.upgrader {
            // On a lattice without credentials anyone may write the order, trusted keys and
            // all: a native binary runs only on the control plane's word.
            Some(upgrader) if self.secure => Arc::clone(upgrader),
            Some(_) => {
                return self.refuse(
                    &order,
                    "this host takes upgrades only on a secure lattice (with a host credential)",
                );
            }
            None => {
                return self.refuse(
                    &order,
                    "this host takes no upgrades (shoal up's hosts go with shoal up)",
                );
            }
        };
        // Not before the host knows what it runs: an order for the binary it already runs
        // is done, not a restart.
        let Some(binary) = self.binary.get() else {
            if !self.identifying {
                self.identifying = true;
                let (known, report) = (Arc::clone(&self.binary), Arc::clone(&self.report));
                tokio::spawn(async move {
                    match upgrader.identify().await {
                        Some(digest) => {
                            let _ = known.set(digest);
                        }
                        None => tell(
                            &report,
                            &order,
                            ReportPhase::Failed,
                            Some("cannot read this host's own binary".to_owned()),
                        ),
                    }
                });
            }
            return;
        };
        if order.target.binary == *binary {
            return;
        }
        tracing::info!(
            upgrade = %order.upgrade,
            reference = %order.target.reference,
            version = %order.target.version,
            "upgrading this host: preparing the new binary"
        );
        self.tell(&order, ReportPhase::Preparing, None);
        self.preparing = true;
        let prepared = self.prepared.clone();
        tokio::spawn(async move {
            let result = match upgrader.prepare(order.clone()).await {
                Ok(path) => Ok(Prepared { order, path }),
                Err(message) => Err((order, message)),
            };
            let _ = prepared.send(result).await;
        });
    }

    /// The binary could not be prepared: told, and not tried again.
    pub(super) fn failed(&mut self, order: &UpgradeOrder, message: String) {
        tracing::warn!(upgrade = %order.upgrade, %message, "cannot upgrade this host");
        self.preparing = false;
        self.tell(order, ReportPhase::Failed, Some(message));
    }

    /// The binary is ready: the host restarts into it.
    pub(super) fn restarting(&mut self, order: &UpgradeOrder) {
        self.tell(order, ReportPhase::Restarting, None);
    }

    /// Whether `order` still stands (not cancelled or replaced while its binary was
    /// prepared): only then does the host restart.
    pub(super) async fn still_ordered(
        &mut self,
        lattice: &Lattice,
        host: &str,
        order: &UpgradeOrder,
    ) -> bool {
        self.preparing = false;
        let standing = lattice
            .get::<UpgradeOrder>(Bucket::Status, &upgrade_order_key(host))
            .await;
        let stands = matches!(&standing, Ok(Some(current)) if current.value == *order);
        if !stands {
            tracing::info!(upgrade = %order.upgrade, "the upgrade order was withdrawn while its binary was prepared: not restarting");
            if let Ok(mut report) = self.report.lock() {
                *report = None;
            }
        }
        stands
    }

    /// Refuses `order`, saying why (once: a refused upgrade is not looked at again).
    fn refuse(&self, order: &UpgradeOrder, why: &str) {
        self.tell(order, ReportPhase::Failed, Some(why.to_owned()));
    }

    fn tell(&self, order: &UpgradeOrder, phase: ReportPhase, message: Option<String>) {
        tell(&self.report, order, phase, message);
    }
}

/// Puts what the host tells of `order` in `report` (its record's).
fn tell(
    report: &Mutex<Option<UpgradeReport>>,
    order: &UpgradeOrder,
    phase: ReportPhase,
    message: Option<String>,
) {
    if let Ok(mut report) = report.lock() {
        *report = Some(UpgradeReport {
            upgrade: order.upgrade.clone(),
            binary: order.target.binary.clone(),
            phase,
            // What went wrong may come from a registry: bounded, so the record stays valid.
            message: message.map(|message| {
                shoal_lattice::validate::truncate(
                    &message,
                    shoal_lattice::fleet::MAX_PROGRESS_MESSAGE,
                )
            }),
        });
    }
}

//! Plans: what a controller decided in one step, as data, and the one writer that applies
//! them. A controller reads a snapshot (the mirrored records, the clock, what this leader
//! remembers) and returns a [`Plan`]; [`apply`] makes its writes in order, each assignment
//! write fenced by the assignments bucket's revision the pass planned against, and stops
//! at the first that fails: another leader moved the bucket (or the key changed), and the
//! next pass plans again from what is there. Controller tests read plans, and reject them
//! as a fenced write would, without nats-server (`harness`).

use super::*;

/// One write (or event) of a plan.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    /// Deletes this assignment at the revision the step saw.
    Remove(Versioned<Assignment>),
    /// Deletes an assignment that could not be read, at the revision refused.
    RemoveUnreadable { key: String, revision: u64 },
    /// Creates an assignment.
    Place(Assignment),
    /// Writes `value` over the assignment at `key` if it is still at `revision`.
    Rewrite {
        key: String,
        value: Box<Assignment>,
        revision: u64,
        why: Rewrite,
    },
    /// Writes an app's status now (not at the pass's end).
    PutAppStatus(String, Box<AppStatus>),
    /// Deletes a record of the status bucket (the replica status a lost host cannot).
    DeleteStatus(String),
    /// Writes a job's status (before the runs it counts go), and remembers it until the
    /// mirror shows it.
    PutJobStatus(String, Box<shoal_lattice::jobs::JobStatus>),
    /// Writes a cron job's status (the times it handled).
    PutCronJobStatus(String, Box<shoal_lattice::jobs::CronJobStatus>),
    /// Deletes a job (its runs go with it at the jobs controller's next step).
    DeleteJob(String),
    /// Creates a job, unless one of its name exists (made by this leader before a status
    /// write that did not land, or by the last one): then nothing, and `made` is not told.
    CreateJob {
        key: String,
        job: Box<shoal_lattice::jobs::JobRecord>,
        made: Event,
    },
    /// Sets an app's replicas (read, changed, compare-and-set), telling it with `why` and
    /// the count it was at (`from_zero`: only when that was zero).
    Scale {
        namespace: String,
        name: String,
        to: u32,
        why: String,
        source: String,
        from_zero: bool,
    },
    /// Tells an event, once the writes before it went through.
    Emit(Event),
    /// Writes the fleet's upgrade if it is still at `revision` (an admin's newer start or
    /// cancel wins: the plan stops).
    UpdateFleet {
        upgrade: Box<shoal_lattice::fleet::FleetUpgrade>,
        revision: u64,
    },
    /// Writes a host's upgrade order.
    PutUpgradeOrder(String, Box<shoal_lattice::fleet::UpgradeOrder>),
    /// Records a failed rollout in the leader's memory (and so in the app's status) as its
    /// event is told: a plan that stops before telling it records nothing, and the next
    /// pass tells it.
    RolloutFailed {
        key: String,
        failed: FailedRollout,
        event: Event,
    },
    /// Rolls an app back to the template of revision `to`, as a new revision, if the app is
    /// still at the revision the step saw (someone's newer change wins).
    Rollback {
        /// The app as the step saw it.
        app: Box<AppRecord>,
        /// The revision whose template comes back.
        to: u64,
        /// Why (the failed rollout).
        reason: String,
        /// Who acts, for events.
        source: String,
    },
}

/// Why an assignment is written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rewrite {
    /// It broke the rules (overwritten by someone not a scheduler): the last readable one
    /// comes back.
    Restore,
    /// Its store credential is due: the same assignment with a fresh one (remembered until
    /// the mirror shows it, so the passes in between do not renew it again).
    RenewStoreCredential,
}

/// What one controller step decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Plan {
    pub(super) ops: Vec<Op>,
}

impl Plan {
    pub(super) fn push(&mut self, op: Op) {
        self.ops.push(op);
    }

    /// The assignments the plan creates.
    #[cfg(test)]
    pub(super) fn placed(&self) -> impl Iterator<Item = &Assignment> {
        self.ops.iter().filter_map(|op| match op {
            Op::Place(assignment) => Some(assignment),
            _ => None,
        })
    }

    /// The reasons of the events the plan tells, in order.
    #[cfg(test)]
    pub(super) fn reasons(&self) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Emit(event) | Op::RolloutFailed { event, .. } => Some(event.reason.clone()),
                _ => None,
            })
            .collect()
    }

    /// The assignments the plan removes.
    #[cfg(test)]
    pub(super) fn removed(&self) -> impl Iterator<Item = &Versioned<Assignment>> {
        self.ops.iter().filter_map(|op| match op {
            Op::Remove(assignment) => Some(assignment),
            _ => None,
        })
    }
}

/// What applying a plan did: the assignments it created (with their revisions), the ones
/// it was to remove and did not, and why it stopped, if it did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    pub(super) created: Vec<Versioned<Assignment>>,
    pub(super) not_created: Vec<String>,
    pub(super) not_removed: Vec<Versioned<Assignment>>,
    /// Apps whose replicas a `Scale` changed.
    pub(super) scaled: usize,
    pub(super) stopped: Option<Error>,
}

impl Applied {
    /// Notes an assignment write of the plan that was not made.
    pub(super) fn not_done(&mut self, op: Op) {
        match op {
            Op::Remove(record) => self.not_removed.push(record),
            Op::Place(assignment) => self
                .not_created
                .push(assignment_key(&assignment.host, &assignment.replica)),
            _ => {}
        }
    }
}

/// Makes `plan`'s writes in order, stopping at the first that fails.
pub(super) async fn apply(
    lattice: &Lattice,
    state: &mut State,
    plan: Plan,
    now: Instant,
) -> Applied {
    let mut applied = Applied::default();
    let mut ops = plan.ops.into_iter();
    for op in ops.by_ref() {
        let done = match op {
            Op::Remove(record) => {
                let result = remove(lattice, state, &record.key, record.revision, now).await;
                if result.is_err() {
                    applied.not_removed.push(record);
                }
                result
            }
            Op::Place(assignment) => {
                let key = assignment_key(&assignment.host, &assignment.replica);
                match create(lattice, state, assignment, now).await {
                    Ok(record) => {
                        // Logged once written (a job's run is an app's replica here too).
                        let placed = &record.value;
                        tracing::info!(namespace = %placed.namespace, app = %placed.app, replica = %placed.replica, host = %placed.host, "placed");
                        applied.created.push(record);
                        Ok(())
                    }
                    Err(error) => {
                        applied.not_created.push(key);
                        Err(error)
                    }
                }
            }
            Op::RemoveUnreadable { key, revision } => {
                remove(lattice, state, &key, revision, now).await
            }
            Op::Rewrite {
                key,
                value,
                revision,
                why,
            } => lattice
                .update_fenced(Bucket::Assignments, &key, &value, revision, state.fence)
                .await
                .map(|written| {
                    state.fence = written;
                    if why == Rewrite::RenewStoreCredential {
                        state
                            .store_renewals
                            .insert(key, super::Renewal { written, at: now });
                    }
                }),
            Op::PutAppStatus(key, status) => {
                lattice.put(Bucket::Status, &key, &status).await.map(|_| ())
            }
            Op::DeleteStatus(key) => lattice.delete(Bucket::Status, &key).await,
            Op::UpdateFleet { upgrade, revision } => lattice
                .update(
                    Bucket::Status,
                    shoal_lattice::names::FLEET_UPGRADE,
                    &upgrade,
                    revision,
                )
                .await
                .map(|_| ()),
            Op::PutUpgradeOrder(host, order) => lattice
                .put(
                    Bucket::Status,
                    &shoal_lattice::names::upgrade_order_key(&host),
                    &order,
                )
                .await
                .map(|_| ()),
            Op::PutCronJobStatus(key, status) => {
                lattice.put(Bucket::Status, &key, &status).await.map(|_| ())
            }
            Op::DeleteJob(key) => lattice.delete(Bucket::Jobs, &key).await,
            Op::CreateJob { key, job, made } => {
                match lattice.create(Bucket::Jobs, &key, &job).await {
                    Ok(_) => {
                        tracing::info!(job = %key, "job made on schedule");
                        lattice.emit(made).await;
                        Ok(())
                    }
                    Err(Error::Conflict { .. }) => Ok(()),
                    Err(error) => Err(error),
                }
            }
            Op::Scale {
                namespace,
                name,
                to,
                why,
                source,
                from_zero,
            } => match apply::scale(lattice, &namespace, &name, to).await {
                Ok(Some(from)) if from != to && (!from_zero || from == 0) => {
                    tracing::info!(app = %app_key(&namespace, &name), from, to, %why, "scaled");
                    lattice
                        .emit(scaled(&source, &namespace, &name, from, to, &why))
                        .await;
                    applied.scaled += 1;
                    Ok(())
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            },
            Op::PutJobStatus(key, status) => {
                let written = lattice.put(Bucket::Status, &key, &status).await;
                if written.is_ok() {
                    state.job_status_written.insert(key, *status);
                }
                written.map(|_| ())
            }
            Op::Emit(event) => {
                lattice.emit(event).await;
                Ok(())
            }
            Op::RolloutFailed { key, failed, event } => {
                state.failed.insert(key, failed);
                lattice.emit(event).await;
                Ok(())
            }
            Op::Rollback {
                app,
                to,
                reason,
                source,
            } => super::rollout::roll_back(lattice, state, &source, &app, to, &reason).await,
        };
        if let Err(error) = done {
            applied.stopped = Some(error);
            break;
        }
    }
    // What was not reached is not done either.
    for op in ops {
        applied.not_done(op);
    }
    applied
}

/// The event of an app scaled from `from` to `to`, and why.
pub(super) fn scaled(
    source: &str,
    namespace: &str,
    name: &str,
    from: u32,
    to: u32,
    why: &str,
) -> Event {
    Event::app(
        source,
        namespace,
        name,
        "Scaled",
        format!("scaled from {from} to {to}: {why}"),
    )
}

/// Writes a new assignment, fenced like every write of a pass, and remembers it until the
/// mirror shows it (so the next pass does not place it again).
pub(super) async fn create(
    lattice: &Lattice,
    state: &mut State,
    assignment: Assignment,
    now: Instant,
) -> Result<Versioned<Assignment>, Error> {
    let key = assignment_key(&assignment.host, &assignment.replica);
    let revision = lattice
        .create_fenced(Bucket::Assignments, &key, &assignment, state.fence)
        .await?;
    state.fence = revision;
    let record = Versioned {
        key: key.clone(),
        revision,
        value: assignment,
    };
    state.pending.created.insert(key, (record.clone(), now));
    Ok(record)
}

/// Deletes an assignment at `revision`, fenced.
pub(super) async fn remove(
    lattice: &Lattice,
    state: &mut State,
    key: &str,
    revision: u64,
    now: Instant,
) -> Result<(), Error> {
    // A conflict means the bucket moved since this pass's view (another leader, or the key
    // itself changed): the pass stops here and the next one plans from what is there.
    state.fence = lattice
        .delete_fenced(Bucket::Assignments, key, revision, state.fence)
        .await?;
    state.pending.created.remove(key);
    state.pending.deleted.insert(key.to_owned(), now);
    Ok(())
}

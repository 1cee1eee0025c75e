//! The lattice's egress policy behind `shoal egress`: the special address ranges (loopback,
//! private, link-local, …) that guests may reach at all, when their app's `allowedOutbound`
//! names such an address literally. Lattice admins change it; the controller copies it into
//! new assignments (replicas already running keep the policy they started with, as with
//! trust policies).

use shoal_lattice::api::{ApiError, ErrorCode};
use shoal_lattice::names::EGRESS_POLICY;
use shoal_lattice::records::EgressPolicy;
use shoal_lattice::{Bucket, Error, Lattice};

use crate::api::internal;

/// How often a lost compare-and-set is tried again.
const ATTEMPTS: usize = 5;

/// The policy as stored; an empty one when there is none. An unreadable record reads as
/// empty (nothing is opened by a record nobody can read) with its revision, so a write can
/// replace it.
///
/// # Errors
/// When the lattice does not answer.
pub async fn read(lattice: &Lattice) -> Result<(EgressPolicy, Option<u64>), Error> {
    Ok(
        match lattice
            .get_checked::<EgressPolicy>(Bucket::Status, EGRESS_POLICY)
            .await?
        {
            None => (EgressPolicy::default(), None),
            Some(Ok(record)) => (record.value, Some(record.revision)),
            Some(Err(revision)) => (EgressPolicy::default(), Some(revision)),
        },
    )
}

/// Adds `range` to the policy (`allowed`) or takes it out; returns the policy after.
///
/// # Errors
/// Invalid for a range that is not a CIDR or a full policy; internal on lattice errors.
pub async fn set(lattice: &Lattice, range: &str, allowed: bool) -> Result<EgressPolicy, ApiError> {
    let parsed: ipnet::IpNet = range.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::Invalid,
            format!(
                "{range:?} is not an address range like 10.1.0.0/16, 169.254.169.254/32 or fd00::/8"
            ),
        )
    })?;
    // Stored as parsed, so `10.1.0.0/16` and `10.1.0.0/016` are one range.
    let range = parsed.to_string();
    for _ in 0..ATTEMPTS {
        let (mut policy, revision) = read(lattice).await?;
        let had = policy.private.contains(&range);
        if had == allowed {
            return Ok(policy);
        }
        if allowed {
            if policy.private.len() >= EgressPolicy::MAX_RANGES {
                return Err(ApiError::new(
                    ErrorCode::Invalid,
                    format!(
                        "the egress policy holds at most {} ranges: take one out or use a wider one",
                        EgressPolicy::MAX_RANGES
                    ),
                ));
            }
            policy.private.push(range.clone());
            policy.private.sort();
        } else {
            policy.private.retain(|held| *held != range);
        }
        let written = match revision {
            None => lattice.create(Bucket::Status, EGRESS_POLICY, &policy).await,
            Some(revision) => {
                lattice
                    .update(Bucket::Status, EGRESS_POLICY, &policy, revision)
                    .await
            }
        };
        match written {
            Ok(_) => return Ok(policy),
            Err(Error::Conflict { .. }) => continue,
            Err(error) => return Err(internal(shoal_lattice::Chain(&error))),
        }
    }
    Err(internal("the egress policy kept changing: try again"))
}

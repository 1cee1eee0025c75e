//! Who may make which request: the role and namespaces each request needs, and the caller
//! a request comes from, read from the subject it arrived on (on a secure lattice,
//! nats-server let it publish there only under a grant of its credential).

use super::{ApiError, ErrorCode, Request};
use crate::auth::{Grant, Role};

impl Request {
    /// The verb: the last token of the subject.
    pub fn verb(&self) -> &'static str {
        match self {
            Request::Apply { .. } | Request::ApplyJobs { .. } => "apply",
            Request::GetJobs { .. } | Request::GetCronJobs { .. } => "get",
            Request::DeleteJob { .. } | Request::DeleteCronJob { .. } => "delete",
            Request::CreateJobFrom { .. } => "create",
            Request::Delete { .. } => "delete",
            Request::Scale { .. } => "scale",
            Request::Undo { .. } => "undo",
            Request::Pause { paused: true, .. } => "pause",
            Request::Pause { paused: false, .. } => "resume",
            Request::History { .. } => "history",
            Request::GetApps { .. } => "get",
            Request::GetHosts | Request::GetControlPlane | Request::GetEgress => "get",
            Request::Egress { .. } => "egress",
            Request::GetReplicas { .. } => "get",
            Request::DescribeApp { .. } => "describe",
            Request::Cordon { cordoned: true, .. } => "cordon",
            Request::Cordon {
                cordoned: false, ..
            } => "uncordon",
            Request::Drain { .. } => "drain",
            Request::PutConfig { .. } => "config",
            Request::GetConfigs { .. } => "get",
            Request::DescribeConfig { .. } => "describe",
            Request::DeleteConfig { .. } => "delete",
            Request::SecretsKey => "get",
            Request::PutSecret { .. } => "secret",
            Request::GetSecrets { .. } => "get",
            Request::DeleteSecret { .. } => "delete",
            Request::TrustKey { .. } => "trust",
            Request::UntrustKey { .. } => "untrust",
            Request::GetTrust { .. } => "get",
            Request::KeyValue { op, .. } if op.writes() => "kv-write",
            Request::KeyValue { .. } => "kv-read",
        }
    }

    /// Whether it acts on the whole lattice (hosts), so only a lattice-wide grant allows it.
    pub fn lattice_wide(&self) -> bool {
        // A trust policy binds every editor of its scope: only a lattice-wide admin sets one.
        matches!(
            self,
            Request::Cordon { .. }
                | Request::Drain { .. }
                | Request::TrustKey { .. }
                | Request::UntrustKey { .. }
                | Request::Egress { .. }
        )
    }

    /// The role it needs and the namespaces it touches (none: it reads lattice-wide or
    /// filters what it reads to what the caller may see).
    pub fn needs(&self) -> (Role, Vec<&str>) {
        match self {
            Request::Apply { apps } => (
                Role::Editor,
                apps.iter().map(|app| app.namespace.as_str()).collect(),
            ),
            Request::ApplyJobs { jobs, cron_jobs } => (
                Role::Editor,
                jobs.iter()
                    .map(|job| job.namespace.as_str())
                    .chain(cron_jobs.iter().map(|cron| cron.namespace.as_str()))
                    .collect(),
            ),
            Request::Delete { namespace, .. }
            | Request::DeleteJob { namespace, .. }
            | Request::DeleteCronJob { namespace, .. }
            | Request::CreateJobFrom { namespace, .. }
            | Request::Scale { namespace, .. }
            | Request::Undo { namespace, .. }
            | Request::Pause { namespace, .. }
            | Request::PutConfig { namespace, .. }
            | Request::DeleteConfig { namespace, .. }
            | Request::PutSecret { namespace, .. }
            | Request::DeleteSecret { namespace, .. } => (Role::Editor, vec![namespace]),
            Request::History { namespace, .. }
            | Request::DescribeApp { namespace, .. }
            | Request::DescribeConfig { namespace, .. } => (Role::Viewer, vec![namespace]),
            Request::KeyValue { namespace, op, .. } => (
                if op.writes() {
                    Role::Editor
                } else {
                    Role::Viewer
                },
                vec![namespace],
            ),
            Request::GetApps { namespace }
            | Request::GetJobs { namespace }
            | Request::GetCronJobs { namespace }
            | Request::GetReplicas { namespace }
            | Request::GetConfigs { namespace }
            | Request::GetSecrets { namespace } => {
                (Role::Viewer, namespace.iter().map(String::as_str).collect())
            }
            Request::GetHosts
            | Request::GetControlPlane
            | Request::GetEgress
            | Request::SecretsKey => (Role::Viewer, Vec::new()),
            // What guests may reach of a host's own networks: the lattice's admins decide.
            Request::Egress { .. } => (Role::Admin, Vec::new()),
            Request::Cordon { .. } | Request::Drain { .. } => (Role::Admin, Vec::new()),
            Request::TrustKey { namespace, .. } | Request::UntrustKey { namespace, .. } => {
                (Role::Admin, namespace.iter().map(String::as_str).collect())
            }
            Request::GetTrust { namespace } => {
                (Role::Viewer, namespace.iter().map(String::as_str).collect())
            }
        }
    }
}

/// Who a request comes from, read from the subject it arrived on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The user's name.
    pub user: String,
    /// The grant the request was sent under.
    pub grant: Grant,
}

impl Caller {
    /// Reads the caller from a request subject `…api.<role>.<scope>.<user>.<verb>`.
    pub fn from_subject(lattice: &str, subject: &str) -> Option<Self> {
        let prefix = crate::auth::api_subjects(lattice);
        let rest = subject.strip_prefix(prefix.trim_end_matches('>'))?;
        let mut tokens = rest.split('.');
        let (Some(role), Some(scope), Some(user), Some(_verb), None) = (
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
            tokens.next(),
        ) else {
            return None;
        };
        Some(Caller {
            user: user.to_owned(),
            grant: Grant::from_scope(role.parse().ok()?, scope),
        })
    }

    /// Whether this caller may do `request`; else the refusal, naming who, what and where.
    pub fn authorize(&self, request: &Request) -> Result<(), ApiError> {
        let (role, namespaces) = request.needs();
        let refuse = |place: &str| {
            ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "forbidden: {} ({}) may not {} {place}",
                    self.user,
                    self.grant,
                    request.verb()
                ),
            )
        };
        if self.grant.role < role || (request.lattice_wide() && self.grant.namespace.is_some()) {
            let place = namespaces
                .first()
                .map_or_else(|| "in the lattice".to_owned(), |ns| format!("in {ns}"));
            return Err(refuse(&place));
        }
        for namespace in namespaces {
            if !self.grant.allows(role, Some(namespace)) {
                return Err(refuse(&format!("in {namespace}")));
            }
        }
        Ok(())
    }

    /// Whether this caller may see things of `namespace`.
    pub fn may_view(&self, namespace: &str) -> bool {
        self.grant.allows(Role::Viewer, Some(namespace))
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::choose_grant;
    use super::*;

    fn caller(role: Role, namespace: Option<&str>) -> Caller {
        Caller {
            user: "alice".to_owned(),
            grant: Grant {
                role,
                namespace: namespace.map(str::to_owned),
            },
        }
    }

    #[test]
    fn callers_are_read_from_the_subject() {
        let read = Caller::from_subject("dev", "shoal.dev.v1.api.viewer.team-a.alice.get");
        assert_eq!(read, Some(caller(Role::Viewer, Some("team-a"))));
        assert_eq!(
            Caller::from_subject("dev", "shoal.dev.v1.api.admin._lattice.root.apply")
                .map(|caller| caller.grant.namespace),
            Some(None)
        );
        for bad in [
            "shoal.dev.v1.api.boss.team-a.alice.get",
            "shoal.dev.v1.api.viewer.team-a.alice",
            "shoal.dev.v1.api.viewer.team-a.alice.get.more",
            "shoal.other.v1.api.viewer.team-a.alice.get",
        ] {
            assert_eq!(Caller::from_subject("dev", bad), None, "{bad}");
        }
    }

    #[test]
    fn refusals_name_who_what_and_where() {
        let delete = Request::Delete {
            namespace: "team-a".to_owned(),
            name: "web".to_owned(),
        };
        let refused = caller(Role::Viewer, Some("team-a"))
            .authorize(&delete)
            .unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
        assert_eq!(
            refused.message,
            "forbidden: alice (viewer in team-a) may not delete in team-a"
        );
        let elsewhere = caller(Role::Editor, Some("team-b"))
            .authorize(&delete)
            .unwrap_err();
        assert_eq!(
            elsewhere.message,
            "forbidden: alice (editor in team-b) may not delete in team-a"
        );
        assert!(
            caller(Role::Editor, Some("team-a"))
                .authorize(&delete)
                .is_ok()
        );
        assert!(caller(Role::Admin, None).authorize(&delete).is_ok());
        assert!(
            caller(Role::Viewer, Some("team-a"))
                .authorize(&Request::GetHosts)
                .is_ok()
        );
    }

    #[test]
    fn only_a_lattice_wide_admin_changes_trust_policies() {
        let add = |namespace: Option<&str>| Request::TrustKey {
            namespace: namespace.map(str::to_owned),
            name: "ci".to_owned(),
            pem: String::new(),
        };
        // A namespace's own admin could otherwise trust a key of their choosing.
        for (who, request) in [
            (caller(Role::Admin, Some("team-a")), add(Some("team-a"))),
            (caller(Role::Editor, None), add(None)),
            (caller(Role::Editor, None), add(Some("team-a"))),
            (caller(Role::Admin, Some("team-a")), add(None)),
        ] {
            let refused = who.authorize(&request).unwrap_err();
            assert_eq!(refused.code, ErrorCode::Forbidden, "{who:?}");
        }
        assert!(
            caller(Role::Admin, None)
                .authorize(&add(Some("team-a")))
                .is_ok()
        );
        let untrust = Request::UntrustKey {
            namespace: None,
            name: "ci".to_owned(),
        };
        assert!(caller(Role::Editor, None).authorize(&untrust).is_err());
        // Anyone may read them: they say what a component needs.
        assert!(
            caller(Role::Viewer, Some("team-a"))
                .authorize(&Request::GetTrust {
                    namespace: Some("team-a".to_owned())
                })
                .is_ok()
        );
    }

    #[test]
    fn the_client_picks_a_grant_that_allows_the_request() {
        let viewer = Grant {
            role: Role::Viewer,
            namespace: None,
        };
        let editor = Grant {
            role: Role::Editor,
            namespace: Some("team-a".to_owned()),
        };
        let grants = [viewer.clone(), editor.clone()];
        let delete = |namespace: &str| Request::Delete {
            namespace: namespace.to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(choose_grant(&grants, &delete("team-a")), editor);
        assert_eq!(choose_grant(&grants, &Request::GetHosts), viewer);
        // No grant allows it: the strongest is sent, and refused by the server.
        assert_eq!(choose_grant(&grants, &delete("team-b")), editor);
    }
}

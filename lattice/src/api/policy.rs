//! Who may make which request: the role and namespaces each request needs, and the caller
//! a request comes from, read from the subject it arrived on (on a secure lattice,
//! nats-server let it publish there only under a grant of its credential).

use super::{ApiError, ErrorCode, Rules};
use crate::auth::{Grant, Role};

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
    pub fn authorize(&self, request: &dyn Rules) -> Result<(), ApiError> {
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
    use super::super::{DeleteApp, GetHosts, GetTrust, TrustKey, UntrustKey};
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
        let delete = DeleteApp {
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
                .authorize(&GetHosts {})
                .is_ok()
        );
    }

    #[test]
    fn only_a_lattice_wide_admin_changes_trust_policies() {
        let add = |namespace: Option<&str>| TrustKey {
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
        let untrust = UntrustKey {
            namespace: None,
            name: "ci".to_owned(),
        };
        assert!(caller(Role::Editor, None).authorize(&untrust).is_err());
        // Anyone may read them: they say what a component needs.
        assert!(
            caller(Role::Viewer, Some("team-a"))
                .authorize(&GetTrust {
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
        let delete = |namespace: &str| DeleteApp {
            namespace: namespace.to_owned(),
            name: "web".to_owned(),
        };
        assert_eq!(choose_grant(&grants, &delete("team-a")), editor);
        assert_eq!(choose_grant(&grants, &GetHosts {}), viewer);
        // No grant allows it: the strongest is sent, and refused by the server.
        assert_eq!(choose_grant(&grants, &delete("team-b")), editor);
    }
}

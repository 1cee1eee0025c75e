//! Which requests the dashboard answers: only those addressed to it by a name it was given.
//!
//! The dashboard acts with its credential for whoever reaches it, so a page of another
//! site must not reach it through the user's browser. A custom header on actions stops
//! cross-site requests, but not DNS rebinding: a page at `attacker.example` whose name
//! resolves to 127.0.0.1 is same-origin with itself and sends `Host: attacker.example`.
//! So every request must name the dashboard in `Host` (the address it listens on,
//! `localhost`, a loopback address, or a name given with `--allow-host`), and a request
//! that carries `Origin` must come from such a name too; anything else is 403.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};

/// The names the dashboard answers to.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    /// Names (lowercase, IPv6 without brackets) that may be used with the listen port.
    local: BTreeSet<String>,
    /// The port the dashboard listens on.
    port: u16,
    /// Names given with `--allow-host` (a reverse proxy's, say): any port.
    extra: BTreeSet<String>,
}

impl AllowedHosts {
    /// The names of a dashboard listening on `listen`, plus `extra` names.
    pub fn new(listen: SocketAddr, extra: &[String]) -> Self {
        let mut local: BTreeSet<String> = ["localhost", "127.0.0.1", "::1"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        if !listen.ip().is_unspecified() {
            local.insert(listen.ip().to_string());
        }
        Self {
            local,
            port: listen.port(),
            extra: extra
                .iter()
                .map(|name| bare(name).to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether `authority` (`name[:port]`, as in `Host`) names this dashboard.
    fn allows(&self, authority: &str) -> bool {
        let Some((name, port)) = split_authority(authority) else {
            return false;
        };
        let name = name.to_ascii_lowercase();
        if self.extra.contains(&name) {
            return true;
        }
        // A loopback address is this machine whatever its spelling (127.0.0.2 too).
        let local = self.local.contains(&name)
            || name
                .parse::<IpAddr>()
                .is_ok_and(|address| address.is_loopback());
        local && port.is_none_or(|port| port == self.port)
    }

    /// `None` when the request is addressed to the dashboard, else why not.
    pub fn check(&self, headers: &HeaderMap) -> Option<String> {
        let Some(host) = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
        else {
            return Some("the request has no Host header".to_owned());
        };
        if !self.allows(host) {
            return Some(format!(
                "the dashboard does not answer to the name {host:?}: open it by the address it listens on, or start it with --allow-host NAME"
            ));
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .ok()
                .and_then(|origin| {
                    origin
                        .strip_prefix("http://")
                        .or_else(|| origin.strip_prefix("https://"))
                })
                .is_some_and(|authority| self.allows(authority));
            if !allowed {
                return Some(format!(
                    "a page of origin {origin:?} may not use this dashboard"
                ));
            }
        }
        None
    }
}

/// A name without IPv6 brackets.
fn bare(name: &str) -> &str {
    name.strip_prefix('[')
        .and_then(|name| name.strip_suffix(']'))
        .unwrap_or(name)
}

/// `name[:port]` → name (IPv6 unbracketed) and port; `None` when malformed.
fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    if let Some(rest) = authority.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        return match after {
            "" => Some((name, None)),
            port => Some((name, Some(port.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') => Some((name, Some(port.parse().ok()?))),
        Some(_) => None,
        None => Some((authority, None)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use axum::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    #[test]
    fn only_the_dashboard_s_own_names_and_origins_are_answered() {
        let allowed = AllowedHosts::new(
            "127.0.0.1:8090".parse().unwrap(),
            &["shoal.example.org".to_owned()],
        );
        for (host, origin) in [
            (Some("127.0.0.1:8090"), None),
            (Some("localhost:8090"), Some("http://localhost:8090")),
            (Some("LOCALHOST"), None),
            (Some("[::1]:8090"), None),
            (Some("shoal.example.org"), Some("https://shoal.example.org")),
            (Some("127.0.0.1:8090"), Some("http://127.0.0.1:8090")),
        ] {
            assert_eq!(
                allowed.check(&headers(host, origin)),
                None,
                "{host:?} {origin:?}"
            );
        }
        for (host, origin) in [
            // DNS rebinding: another name for this address.
            (Some("attacker.example:8090"), None),
            (
                Some("attacker.example:8090"),
                Some("http://attacker.example:8090"),
            ),
            // The right Host, a foreign page.
            (Some("127.0.0.1:8090"), Some("http://attacker.example:8090")),
            (Some("127.0.0.1:8090"), Some("null")),
            // Another port of this machine is another origin.
            (Some("127.0.0.1:9999"), None),
            (Some("localhost:8090"), Some("http://localhost:1234")),
            (None, None),
            (Some("127.0.0.1:8090@evil"), None),
        ] {
            assert!(
                allowed.check(&headers(host, origin)).is_some(),
                "{host:?} {origin:?}"
            );
        }
    }

    #[test]
    fn a_dashboard_on_all_interfaces_answers_loopback_and_the_names_it_was_given() {
        let allowed = AllowedHosts::new("0.0.0.0:8090".parse().unwrap(), &["[fd00::1]".to_owned()]);
        assert_eq!(allowed.check(&headers(Some("localhost:8090"), None)), None);
        assert_eq!(allowed.check(&headers(Some("[fd00::1]:8090"), None)), None);
        assert!(
            allowed
                .check(&headers(Some("0.0.0.0:8090"), None))
                .is_some()
        );
        assert!(
            allowed
                .check(&headers(Some("192.168.1.9:8090"), None))
                .is_some()
        );
    }
}

//! Outbound HTTP from guests, sent by the host itself so the address it connects to is the
//! address it checked: a name is resolved once, every address is checked, and the connection
//! goes to a checked address (no window for DNS rebinding). Loopback, private, link-local
//! (the cloud metadata address included) and other special ranges, and this host's own
//! listeners, are refused unless an allowlist entry names that address literally.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody};

/// Where guests may connect, beyond what the allowlist's names say.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    /// Addresses an allowlist entry names literally: allowed whatever their range.
    pub named: Vec<IpAddr>,
    /// This host's own listeners (ingress, metrics, NATS): refused unless named.
    pub own: Vec<SocketAddr>,
}

impl AddressPolicy {
    /// Whether a guest may connect to `address`.
    pub fn permits(&self, address: SocketAddr) -> bool {
        let ip = canonical(address.ip());
        if self.named.iter().any(|named| canonical(*named) == ip) {
            return true;
        }
        // Listeners bound to every address were expanded to each local address
        // (`expand_unspecified`).
        let own = self
            .own
            .iter()
            .any(|own| own.port() == address.port() && canonical(own.ip()) == ip);
        !own && !special(ip)
    }
}

/// `listeners` with each one bound to every address (0.0.0.0, ::) repeated for each of this
/// machine's addresses, so a guest cannot reach it through the host's public address.
pub fn expand_unspecified(listeners: &[SocketAddr]) -> Vec<SocketAddr> {
    let local: Vec<IpAddr> = if_addrs::get_if_addrs()
        .map(|interfaces| {
            interfaces
                .into_iter()
                .map(|interface| interface.ip())
                .collect()
        })
        .unwrap_or_default();
    listeners
        .iter()
        .flat_map(|listener| {
            let every = if listener.ip().is_unspecified() {
                local
                    .iter()
                    .map(|ip| SocketAddr::new(*ip, listener.port()))
                    .collect()
            } else {
                Vec::new()
            };
            std::iter::once(*listener).chain(every)
        })
        .collect()
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Ranges a guest never reaches by name: this machine, private networks, link-local (cloud
/// metadata at 169.254.169.254), shared address space, multicast, unspecified, benchmarking
/// (198.18/15), IETF protocol assignments (192.0.0/24) and reserved (240/4) ones; and IPv6
/// addresses that carry an IPv4 address (NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4
/// `2002::/16`, IPv4-compatible `::/96`) when the address they carry is one of those.
pub(crate) fn special(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let first = segments[0];
            let octets = v6.octets();
            let last_four = std::net::Ipv4Addr::new(octets[12], octets[13], octets[14], octets[15]);
            let embedded = if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || segments[..6] == [0, 0, 0, 0, 0, 0]
            {
                Some(last_four)
            } else if segments[..2] == [0x64, 0xff9b] && segments[2] == 1 {
                // 64:ff9b:1::/48, RFC 8215: the IPv4 address in the low 32 bits.
                Some(last_four)
            } else if first == 0x2002 {
                Some(std::net::Ipv4Addr::new(
                    octets[2], octets[3], octets[4], octets[5],
                ))
            } else {
                None
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || embedded.is_some_and(special_v4)
        }
    }
}

fn special_v4(v4: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_broadcast()
        || v4.is_multicast()
        || (a == 100 && (64..128).contains(&b))
        || a == 0
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && c == 0)
        || a >= 240
}

/// The response body and the future that drives the connection, as wasi-http wants them.
type Sent = (
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), Error>> + Send>,
);

/// Sends `request` to the address its URI names, if `policy` permits one.
///
/// # Errors
/// [`Error::DestinationIpProhibited`] when no resolved address may be reached; DNS,
/// connection, TLS and HTTP errors as wasi-http names them.
pub async fn send(
    mut request: Request<WasiBody>,
    options: Option<RequestOptions>,
    policy: Arc<AddressPolicy>,
) -> Result<Sent, Error> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or(Error::HttpRequestUriInvalid)?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let connect_timeout = options
        .and_then(|options| options.connect_timeout)
        .unwrap_or(Duration::from_secs(30));
    let first_byte_timeout = options
        .and_then(|options| options.first_byte_timeout)
        .unwrap_or(Duration::from_secs(600));

    let addresses: Vec<SocketAddr> = tokio::time::timeout(
        connect_timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::DnsTimeout)?
    .map_err(|_| Error::DestinationNotFound)?
    .collect();
    let permitted: Vec<SocketAddr> = addresses
        .iter()
        .copied()
        .filter(|address| policy.permits(*address))
        .collect();
    if permitted.is_empty() {
        tracing::warn!(%uri, ?addresses, "outbound request refused: the address is this host or a private network");
        return Err(Error::DestinationIpProhibited);
    }
    let stream = tokio::time::timeout(
        connect_timeout,
        tokio::net::TcpStream::connect(permitted.as_slice()),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)?
    .map_err(Error::Connect)?;

    let io: Box<dyn Stream> = if https {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.into(),
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|error| Error::InternalError(Some(error.to_string())))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => rustls::pki_types::ServerName::from(ip),
            Err(_) => rustls::pki_types::ServerName::try_from(host.clone())
                .map_err(Error::InvalidDnsNameError)?,
        };
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        Box::new(
            tokio::time::timeout(connect_timeout, connector.connect(name, stream))
                .await
                .map_err(|_| Error::ConnectionTimeout)?
                .map_err(Error::Tls)?,
        )
    } else {
        Box::new(stream)
    };
    let (mut sender, connection) = tokio::time::timeout(
        connect_timeout,
        hyper::client::conn::http1::handshake(TokioIo::new(io)),
    )
    .await
    .map_err(|_| Error::ConnectionTimeout)??;
    let driver = tokio::spawn(connection);

    // The request line carries the path only; the authority travels as the Host header.
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    *request.uri_mut() = path.parse().map_err(|_| Error::HttpRequestUriInvalid)?;
    if !request.headers().contains_key(http::header::HOST)
        && let Some(authority) = uri.authority()
        && let Ok(value) = http::HeaderValue::from_str(authority.as_str())
    {
        request.headers_mut().insert(http::header::HOST, value);
    }
    let response = tokio::time::timeout(first_byte_timeout, sender.send_request(request))
        .await
        .map_err(|_| Error::ConnectionReadTimeout)??;
    let response = response.map(|body| body.map_err(Error::from).boxed_unsync());
    Ok((
        response,
        Box::new(async move {
            match driver.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(error)) => Err(Error::from(error)),
                Err(_) => Err(Error::ConnectionTerminated),
            }
        }),
    ))
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn special_ranges_and_own_listeners_are_refused_unless_named() {
        let policy = AddressPolicy {
            named: vec!["127.0.0.1".parse().unwrap()],
            own: vec![address("0.0.0.0:8080"), address("203.0.113.7:4222")],
        };
        assert!(policy.permits(address("93.184.216.34:443")));
        assert!(policy.permits(address("127.0.0.1:9000")));
        for refused in [
            "127.0.0.2:80",
            "10.1.2.3:80",
            "172.16.0.1:80",
            "192.168.1.1:80",
            "169.254.169.254:80",
            "100.64.0.1:80",
            "0.0.0.0:80",
            "[::1]:80",
            "[fd00::1]:80",
            "[fe80::1]:80",
            "[::ffff:10.0.0.1]:80",
            "203.0.113.7:4222",
            "[64:ff9b::a01:203]:80",
            "[64:ff9b:1::a9fe:a9fe]:80",
            "[2002:a9fe:a9fe::1]:80",
            "[::7f00:1]:80",
            "198.18.0.1:80",
            "192.0.0.8:80",
            "240.0.0.1:80",
        ] {
            assert!(!policy.permits(address(refused)), "{refused}");
        }
        assert!(policy.permits(address("203.0.113.7:443")));
        assert!(policy.permits(address("93.184.216.34:8080")));
        // A public address behind NAT64 is public.
        assert!(policy.permits(address("[64:ff9b::5db8:d822]:443")));
    }

    #[test]
    fn listeners_on_every_address_are_known_by_each_local_address() {
        let expanded = expand_unspecified(&[address("0.0.0.0:8080"), address("10.0.0.1:9100")]);
        assert!(expanded.contains(&address("0.0.0.0:8080")));
        assert!(
            expanded.contains(&address("127.0.0.1:8080")),
            "{expanded:?}"
        );
        assert!(expanded.contains(&address("10.0.0.1:9100")));
        assert!(!expanded.contains(&address("127.0.0.1:9100")));
    }
}

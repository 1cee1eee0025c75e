//! Forwarding HTTP over the lattice: a host with no ready local replica of an app sends the
//! request to one of the app's endpoints (the hosts with a ready replica, as the scheduler
//! lists them in the app's routing record), on `shoal.<lattice>.v1.http.<host>.<namespace>.<app>`.
//! Each host listens only under its own id, which is all a host credential may subscribe
//! to: a host cannot take another app's requests. Endpoints are tried round robin; one that
//! has no replica of the app any more (`Shoal-Not-Here`) or is gone (no responders) passes
//! the request to the next, so a stale list costs a retry, not an error. With no endpoint
//! left the request waits up to a second for the list to change, then gets 503.
//!
//! On the wire a request is a NATS request: HTTP headers as NATS headers, plus
//! `Shoal-Method`, `Shoal-Uri` and `Shoal-From` (the forwarding host); the body is the
//! payload. The reply carries `Shoal-Status` and the response headers, with the body as
//! payload. A body up to [`INLINE_LIMIT`] travels in that one message; a larger one (either
//! way) starts there and streams in chunks with flow control ([`stream`]), so a host holds
//! a few chunks of it, never the whole body. Bodies are bounded by the app's
//! `limits.maxBody` at the host that runs it.
//!
//! `wire` is the format, `client` the forwarding side, `server` the answering side,
//! `budget` what a host may hold, `stream` large bodies.

mod budget;
mod client;
mod server;
mod stream;
mod wire;

pub use budget::{BufferBudget, MAX_FORWARDED_TASKS};
pub use client::Forwarder;
pub use server::listen;
pub use wire::{INLINE_LIMIT, SERVED_BY};

/// Fuzzing: forwarded messages with random headers, methods, URIs and statuses are answered
/// or refused, never a panic.
#[cfg(test)]
mod fuzz {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::Full;
    use proptest::prelude::*;

    use super::budget::*;

    use super::wire::*;

    fn header_maps() -> impl Strategy<Value = async_nats::HeaderMap> {
        let name = prop_oneof![
            Just(METHOD.to_owned()),
            Just(URI.to_owned()),
            Just(STATUS.to_owned()),
            Just(NOT_HERE.to_owned()),
            Just("content-length".to_owned()),
            Just("host".to_owned()),
            "[!-9;-~]{1,12}",
        ];
        let value = prop_oneof![
            "[A-Z]{1,8}",
            "/[ -~]{0,40}",
            "[0-9]{1,12}",
            "[ -~]{0,40}",
            any::<String>(),
        ];
        prop::collection::vec((name, value), 0..8).prop_map(|pairs| {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in pairs {
                headers.append(name.as_str(), value.as_str());
            }
            headers
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn random_forwarded_requests_never_panic(
            headers in header_maps(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = forwarded_request(Some(&headers), Bytes::from(payload));
        }

        #[test]
        fn random_forwarded_responses_never_panic(
            headers in header_maps(),
            payload in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let message = async_nats::Message {
                subject: "reply".into(),
                reply: None,
                payload: Bytes::from(payload),
                headers: Some(headers),
                status: None,
                description: None,
                length: 0,
            };
            let _ = response_head(message);
        }
    }

    #[tokio::test]
    async fn bodies_are_reserved_by_their_total_and_refused_past_the_budget() {
        let budget = BufferBudget::new(64 * 1024);
        // A thousand 10-byte frames weigh 10 KB, not a thousand KiB.
        let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..1000)
            .map(|_| Ok(http_body::Frame::data(Bytes::from_static(b"0123456789"))))
            .collect();
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let Ok(Collected {
            bytes,
            _reserved: reserved,
            rest: None,
        }) = read_up_to(&mut Box::pin(body), 1 << 20, &budget).await
        else {
            panic!("a 10 KB body fits a 64 KiB budget");
        };
        assert_eq!(bytes.len(), 10_000);
        assert_eq!(budget.unreserved(), (64 - 10) * 1024);
        drop(reserved);
        assert_eq!(budget.unreserved(), 64 * 1024);
        let large = Full::new(Bytes::from(vec![0u8; 65 * 1024]));
        assert!(matches!(
            read_up_to(&mut Box::pin(large), 1 << 20, &budget).await,
            Err(Collect::Busy)
        ));
        assert_eq!(budget.unreserved(), 64 * 1024);
    }

    #[test]
    fn a_message_without_headers_is_malformed() {
        assert!(forwarded_request(None, Bytes::new()).is_none());
    }
}

//! A bare NATS client with a credential, to try what the server lets it do.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::eventually;

/// A bare NATS client with a credential, collecting the errors the server sends it.
pub struct Raw {
    pub client: async_nats::Client,
    pub errors: Arc<Mutex<Vec<String>>>,
    pub runtime: tokio::runtime::Runtime,
}

impl Raw {
    pub fn connect(url: &str, creds: &Path, inbox: &str) -> Self {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let errors = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&errors);
        let client = runtime.block_on(async {
            async_nats::ConnectOptions::with_credentials_file(creds)
                .await
                .unwrap()
                .custom_inbox_prefix(inbox)
                .event_callback(move |event| {
                    let seen = Arc::clone(&seen);
                    async move {
                        seen.lock().unwrap().push(event.to_string());
                    }
                })
                .connect(url)
                .await
                .unwrap()
        });
        Self {
            client,
            errors,
            runtime,
        }
    }

    /// Whether a client (with `creds`, or none) is admitted: `Err` with the server's
    /// refusal.
    pub fn try_connect(url: &str, creds: Option<&Path>) -> Result<(), String> {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let options = match creds {
                Some(creds) => async_nats::ConnectOptions::with_credentials_file(creds)
                    .await
                    .unwrap(),
                None => async_nats::ConnectOptions::new(),
            };
            let client = options
                .connection_timeout(Duration::from_secs(3))
                .connect(url)
                .await
                .map_err(|error| error.to_string())?;
            // A connection the server closes right after CONNECT fails its first flush.
            tokio::time::timeout(Duration::from_secs(3), client.flush())
                .await
                .map_err(|_| "no answer".to_owned())?
                .map_err(|error| error.to_string())
        })
    }

    /// Publishes `payload` on `subject` with the reply subject `reply`, as a requester that
    /// chooses where the answer goes.
    pub fn publish_with_reply(&self, subject: &str, reply: &str, payload: &str) {
        self.runtime.block_on(async {
            self.client
                .publish_with_reply(
                    subject.to_owned(),
                    reply.to_owned(),
                    payload.to_owned().into(),
                )
                .await
                .unwrap();
            self.client.flush().await.unwrap();
        });
    }

    pub fn publish(&self, subject: &str) {
        self.runtime.block_on(async {
            self.client
                .publish(subject.to_owned(), "{}".into())
                .await
                .unwrap();
            self.client.flush().await.unwrap();
        });
    }

    /// A JetStream publish: `Ok` once the stream stored it.
    pub fn store(&self, subject: &str, payload: &str) -> Result<(), String> {
        self.store_with_headers(subject, payload, &[])
    }

    /// A JetStream publish with `headers`: `Ok` once the stream stored it.
    pub fn store_with_headers(
        &self,
        subject: &str,
        payload: &str,
        headers: &[(&str, &str)],
    ) -> Result<(), String> {
        self.runtime.block_on(async {
            let context = async_nats::jetstream::new(self.client.clone());
            let mut map = async_nats::HeaderMap::new();
            for (name, value) in headers {
                map.insert(*name, *value);
            }
            let ack = context
                .publish_with_headers(subject.to_owned(), map, payload.to_owned().into())
                .await
                .map_err(|error| error.to_string())?;
            tokio::time::timeout(Duration::from_secs(3), ack)
                .await
                .map_err(|_| "no ack".to_owned())?
                .map(|_| ())
                .map_err(|error| error.to_string())
        })
    }

    /// Whether stream `stream` takes `Nats-Rollup` headers (read with a credential of the
    /// state account).
    pub fn takes_rollups(&self, stream: &str) -> bool {
        self.runtime.block_on(async {
            let mut stream = async_nats::jetstream::new(self.client.clone())
                .get_stream(stream)
                .await
                .unwrap();
            stream.info().await.unwrap().config.allow_rollup
        })
    }

    /// The value of `key` in KV bucket `bucket`, as this credential may read it.
    pub fn kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            let store = async_nats::jetstream::new(self.client.clone())
                .get_key_value(bucket)
                .await
                .unwrap();
            store.get(key).await.unwrap().map(|value| value.to_vec())
        })
    }

    /// The value of `key` in KV bucket `bucket`, read as a host or a person reads it: in
    /// the state account, through their account's imports.
    pub fn client_kv_get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        self.runtime.block_on(async {
            let store = async_nats::jetstream::with_prefix(
                self.client.clone(),
                shoal_lattice::auth::STATE_API_PREFIX,
            )
            .get_key_value(bucket)
            .await
            .unwrap();
            store.get(key).await.unwrap().map(|value| value.to_vec())
        })
    }

    pub fn subscribe(&self, subject: &str) {
        self.runtime.block_on(async {
            let subscriber = self.client.subscribe(subject.to_owned()).await.unwrap();
            self.client.flush().await.unwrap();
            // Held until the server answered.
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(subscriber);
        });
    }

    /// Waits until the server has refused `what` on `subject`.
    pub fn wait_refused(&self, what: &str, subject: &str) {
        let wanted = format!("Permissions Violation for {what} to \"{subject}\"");
        eventually(Duration::from_secs(5), &wanted, || {
            self.errors
                .lock()
                .unwrap()
                .iter()
                .any(|error| error.contains(&wanted))
                .then_some(())
        });
    }
}

//! How the scheduler does `shoal kv`: one operation on a store the app grants.

use shoal_lattice::Bucket;
use shoal_lattice::api::{
    ErrorCode, KeyValue, KeyValueAnswer, KeyValueOp, decode_value, encode_value,
};
use shoal_lattice::appkv::StoreError;
use shoal_lattice::names::app_key;
use shoal_lattice::records::AppRecord;

use super::{ApiError, Context, Handle, internal, no_app};

impl Handle for KeyValue {
    async fn handle(self, cx: &Context<'_>) -> Result<KeyValueAnswer, ApiError> {
        let Self {
            namespace,
            app,
            store,
            op,
        } = self;
        let lattice = cx.lattice;
        let record = lattice
            .get::<AppRecord>(Bucket::Apps, &app_key(&namespace, &app))
            .await?
            .ok_or_else(|| no_app(&namespace, &app))?;
        if !record
            .value
            .spec
            .key_value
            .iter()
            .any(|granted| granted.name == store)
        {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!("app {namespace}/{app} has no key-value store {store:?} (spec.keyValue)"),
            ));
        }
        let opened = lattice
            .open_app_store(&namespace, &app, &store)
            .await
            .map_err(internal)?;
        let invalid = |error: StoreError| match error {
            StoreError::Unreachable(_) => internal(error),
            _ => ApiError::new(ErrorCode::Invalid, error.to_string()),
        };
        Ok(match op {
            KeyValueOp::Get { key } => KeyValueAnswer::Value {
                value: opened
                    .get(&key)
                    .await
                    .map_err(invalid)?
                    .map(|value| encode_value(&value)),
            },
            KeyValueOp::Put { key, value } => {
                let value = decode_value(&value)
                    .ok_or_else(|| ApiError::new(ErrorCode::Invalid, "the value is not base64"))?;
                opened.set(&key, value).await.map_err(invalid)?;
                KeyValueAnswer::Done
            }
            KeyValueOp::Delete { key } => {
                opened.delete(&key).await.map_err(invalid)?;
                KeyValueAnswer::Done
            }
            KeyValueOp::List { after } => {
                let (keys, next) = opened.list(after.as_deref()).await.map_err(invalid)?;
                KeyValueAnswer::Keys { keys, next }
            }
        })
    }
}

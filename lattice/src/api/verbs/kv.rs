//! `shoal kv`: an operator's look at, or change to, an app's key-value store.

use serde::{Deserialize, Serialize};

use super::{Rules, Verb, check_named};
use crate::Error;
use crate::auth::Role;
use crate::names::check_name;

/// One operation on a store the app grants (`spec.keyValue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyValue {
    /// Namespace.
    pub namespace: String,
    /// The app.
    pub app: String,
    /// The store (as in `spec.keyValue`).
    pub store: String,
    /// What to do.
    pub op: KeyValueOp,
}

impl Rules for KeyValue {
    fn verb(&self) -> &'static str {
        if self.op.writes() {
            "kv-write"
        } else {
            "kv-read"
        }
    }

    fn needs(&self) -> (Role, Vec<&str>) {
        let role = if self.op.writes() {
            Role::Editor
        } else {
            Role::Viewer
        };
        (role, vec![self.namespace.as_str()])
    }

    fn check_names(&self) -> Result<(), Error> {
        check_named(&self.namespace, "app", &self.app)?;
        check_name("store name", &self.store)
    }
}

impl Verb for KeyValue {
    type Answer = KeyValueAnswer;
}

/// What `shoal kv` does to a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "op")]
pub enum KeyValueOp {
    /// Read a key: answers [`KeyValueAnswer::Value`].
    Get {
        /// The key.
        key: String,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value, base64.
        value: String,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// List keys, a page after `after`: answers [`KeyValueAnswer::Keys`].
    List {
        /// The last key of the previous page.
        after: Option<String>,
    },
}

/// A store value as `shoal kv` carries it (base64).
pub fn encode_value(value: &[u8]) -> String {
    data_encoding::BASE64.encode(value)
}

/// A store value from its base64 form; `None` if it is not base64.
pub fn decode_value(text: &str) -> Option<Vec<u8>> {
    data_encoding::BASE64.decode(text.as_bytes()).ok()
}

impl KeyValueOp {
    /// Whether it changes the store.
    pub fn writes(&self) -> bool {
        matches!(self, KeyValueOp::Put { .. } | KeyValueOp::Delete { .. })
    }
}

/// What `shoal kv` gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "answer")]
pub enum KeyValueAnswer {
    /// A value (base64), or none.
    Value {
        /// The value.
        value: Option<String>,
    },
    /// A page of keys and where the next one starts.
    Keys {
        /// Keys.
        keys: Vec<String>,
        /// The last key of this page, when there are more.
        next: Option<String>,
    },
    /// Done.
    Done,
}

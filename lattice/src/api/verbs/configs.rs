//! The verbs on config objects and secrets: put, describe, delete, list, and the key
//! secrets are sealed to.

use std::collections::BTreeMap;

use super::{lattice_read, listing, named_verb};
use crate::api::{ConfigPut, ConfigView, SecretView};
use crate::auth::Role;
use crate::records::SecretsKey;
use crate::secrets::Sealed;

named_verb!(
    /// Create a config object or replace its values; apps that list it roll out.
    PutConfig, "config", |_| "config", Role::Editor, ConfigPut, resend: true,
    /// The values.
    data: BTreeMap<String, String>,
);
named_verb!(
    /// One config object with its values and the apps that use it.
    DescribeConfig, "config", |_| "describe", Role::Viewer, ConfigView, resend: true
);
named_verb!(
    /// Delete a config object no app uses.
    DeleteConfig, "config", |_| "delete", Role::Editor, (), resend: true
);
listing!(
    /// Config objects.
    GetConfigs,
    Vec<ConfigView>
);

named_verb!(
    /// Create a secret or replace its values (sealed by the client to the lattice's
    /// secrets key); apps that list it roll out.
    PutSecret, "secret", |_| "secret", Role::Editor, ConfigPut, resend: true,
    /// The keys of the sealed values.
    keys: Vec<String>,
    /// The values, sealed.
    sealed: Sealed,
);
named_verb!(
    /// Delete a secret no app uses.
    DeleteSecret, "secret", |_| "delete", Role::Editor, (), resend: true
);
listing!(
    /// Secrets: names, keys, versions and users, never values.
    GetSecrets,
    Vec<SecretView>
);

lattice_read!(
    /// The public key secrets are sealed to.
    GetSecretsKey,
    SecretsKey
);

//! How the scheduler does the verbs on config objects and secrets (the records' rules
//! are in [`crate::configs`] and [`crate::secrets`]).

use shoal_lattice::Bucket;
use shoal_lattice::api::{
    ConfigPut, ConfigView, DeleteConfig, DeleteSecret, DescribeConfig, ErrorCode, GetConfigs,
    GetSecrets, GetSecretsKey, PutConfig, PutSecret, SecretView,
};
use shoal_lattice::records::SecretsKey;

use super::{ApiError, Context, Handle, refuse_invalid};
use crate::{configs, secrets};

impl Handle for PutConfig {
    async fn handle(self, cx: &Context<'_>) -> Result<ConfigPut, ApiError> {
        let Self {
            namespace,
            name,
            data,
        } = self;
        refuse_invalid(
            &format!("config {namespace}/{name}"),
            shoal_lattice::validate::config_data_problems(&data),
        )?;
        Ok(configs::put(cx.lattice, &namespace, &name, data).await?)
    }
}

impl Handle for GetConfigs {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<ConfigView>, ApiError> {
        let visible = cx.visible(self.namespace.as_deref());
        Ok(configs::list(cx.lattice, visible).await?)
    }
}

impl Handle for DescribeConfig {
    async fn handle(self, cx: &Context<'_>) -> Result<ConfigView, ApiError> {
        let Self { namespace, name } = self;
        configs::describe(cx.lattice, &namespace, &name)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    format!("there is no config {namespace}/{name}; shoal get configs lists them"),
                )
            })
    }
}

impl Handle for DeleteConfig {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let outcome = configs::delete(cx.lattice, &self.namespace, &self.name).await?;
        deleted(
            outcome,
            "config",
            &self.namespace,
            &self.name,
            "spec.configFrom",
        )
    }
}

impl Handle for GetSecretsKey {
    async fn handle(self, cx: &Context<'_>) -> Result<SecretsKey, ApiError> {
        let key = cx
            .lattice
            .get::<SecretsKey>(Bucket::Status, shoal_lattice::names::SECRETS_KEY)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::NotFound,
                    "this lattice has no secrets key yet: its schedulers need one (shoal scheduler --secrets-key FILE; shoal auth init and shoal up make one)",
                )
            })?;
        Ok(key.value)
    }
}

impl Handle for PutSecret {
    async fn handle(self, cx: &Context<'_>) -> Result<ConfigPut, ApiError> {
        let Self {
            namespace,
            name,
            keys,
            sealed,
        } = self;
        refuse_invalid(
            &format!("secret {namespace}/{name}"),
            secret_problems(&keys, &sealed),
        )?;
        Ok(secrets::put(cx.lattice, &namespace, &name, keys, sealed).await?)
    }
}

impl Handle for GetSecrets {
    async fn handle(self, cx: &Context<'_>) -> Result<Vec<SecretView>, ApiError> {
        let visible = cx.visible(self.namespace.as_deref());
        Ok(secrets::list(cx.lattice, visible).await?)
    }
}

impl Handle for DeleteSecret {
    async fn handle(self, cx: &Context<'_>) -> Result<(), ApiError> {
        let outcome = secrets::delete(cx.lattice, &self.namespace, &self.name).await?;
        deleted(
            outcome,
            "secret",
            &self.namespace,
            &self.name,
            "spec.secrets",
        )
    }
}

/// The answer to deleting a config object or a secret.
fn deleted(
    outcome: configs::Deleted,
    kind: &str,
    namespace: &str,
    name: &str,
    field: &str,
) -> Result<(), ApiError> {
    match outcome {
        configs::Deleted::Done => Ok(()),
        configs::Deleted::NotFound => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("there is no {kind} {namespace}/{name}; shoal get {kind}s lists them"),
        )),
        configs::Deleted::InUse(apps) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "{kind} {namespace}/{name} is in use by {}: remove it from their {field} first",
                apps.join(", ")
            ),
        )),
    }
}

/// What is wrong with a secret as the CLI sent it: its keys are those of a config object,
/// its box no larger than such values could make.
fn secret_problems(keys: &[String], sealed: &shoal_lattice::secrets::Sealed) -> Vec<String> {
    let named: std::collections::BTreeMap<String, String> = keys
        .iter()
        .map(|key| (key.clone(), String::new()))
        .collect();
    let mut problems = shoal_lattice::validate::config_data_problems(&named);
    if named.len() != keys.len() {
        problems.push("a key is given twice".to_owned());
    }
    // Base64 of the values' JSON, with room for escapes and the box.
    if sealed.sealed.len() > 2 * shoal_lattice::validate::MAX_CONFIG_BYTES {
        problems.push(format!(
            "the values must be at most {} KiB in all",
            shoal_lattice::validate::MAX_CONFIG_BYTES >> 10
        ));
    }
    problems
}

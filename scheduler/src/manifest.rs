//! App manifests: YAML documents parsed and validated whole, before anything is stored.
//!
//! Every error names the document, the field path and the reason, and every document of a
//! file is checked, so one run shows everything to fix.

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use shoal_lattice::names;
use shoal_lattice::records::{API_VERSION, AppSpec, DEFAULT_NAMESPACE};

/// One validated app from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct App {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Spec as written.
    pub spec: AppSpec,
}

/// A problem with one field of one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// 1-based document number in the file.
    pub document: usize,
    /// Field path, like `spec.limits.memory`.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() || self.path == "." {
            write!(f, "document {}: {}", self.document, self.reason)
        } else {
            write!(
                f,
                "document {}: {}: {}",
                self.document, self.path, self.reason
            )
        }
    }
}

/// All the problems of a manifest file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.0.len();
        writeln!(
            f,
            "the manifest has {count} problem{}; nothing was applied:",
            if count == 1 { "" } else { "s" }
        )?;
        for error in &self.0 {
            writeln!(f, "  {error}")?;
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: AppSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: std::collections::BTreeMap<String, String>,
}

/// Parses and validates every document of `text`.
///
/// # Errors
/// Every problem found, with document number and field path; no app is returned unless all
/// documents are valid.
pub fn parse(text: &str) -> Result<Vec<App>, ManifestErrors> {
    let mut apps = Vec::new();
    let mut errors = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value = match serde_yaml::Value::deserialize(document) {
            Ok(serde_yaml::Value::Null) => continue,
            Ok(value) => value,
            Err(error) => {
                errors.push(ManifestError {
                    document: number,
                    path: String::new(),
                    reason: format!("not valid YAML: {error}"),
                });
                // After a syntax error the YAML stream cannot be trusted.
                break;
            }
        };
        match serde_path_to_error::deserialize::<_, Document>(value) {
            Ok(document) => match check(number, document) {
                Ok(app) => apps.push((number, app)),
                Err(mut found) => errors.append(&mut found),
            },
            Err(error) => errors.push(ManifestError {
                document: number,
                path: error.path().to_string(),
                reason: error.into_inner().to_string(),
            }),
        }
    }
    let mut seen = BTreeSet::new();
    for (document, app) in &apps {
        if !seen.insert((app.namespace.clone(), app.name.clone())) {
            errors.push(ManifestError {
                document: *document,
                path: "metadata.name".to_owned(),
                reason: format!(
                    "app {}/{} appears more than once in this file",
                    app.namespace, app.name
                ),
            });
        }
    }
    if apps.is_empty() && errors.is_empty() {
        errors.push(ManifestError {
            document: 1,
            path: String::new(),
            reason: "the file holds no documents".to_owned(),
        });
    }
    if errors.is_empty() {
        Ok(apps.into_iter().map(|(_, app)| app).collect())
    } else {
        errors.sort_by_key(|error| error.document);
        Err(ManifestErrors(errors))
    }
}

fn check(document: usize, parsed: Document) -> Result<App, Vec<ManifestError>> {
    let mut errors = Vec::new();
    let mut fail = |path: &str, reason: String| {
        errors.push(ManifestError {
            document,
            path: path.to_owned(),
            reason,
        });
    };
    if parsed.api_version != API_VERSION {
        fail(
            "apiVersion",
            format!("must be {API_VERSION}, not {:?}", parsed.api_version),
        );
    }
    if parsed.kind != "App" {
        fail("kind", format!("must be App, not {:?}", parsed.kind));
    }
    let namespace = parsed
        .metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    if let Err(error) = names::check_name("name", &parsed.metadata.name) {
        fail("metadata.name", error.to_string());
    }
    if let Err(error) = names::check_name("namespace", &namespace) {
        fail("metadata.namespace", error.to_string());
    }
    let spec = &parsed.spec;
    if spec.component.trim().is_empty() || spec.component.contains(char::is_whitespace) {
        fail(
            "spec.component",
            "must be an OCI reference like registry.example/team/hello:1.0".to_owned(),
        );
    }
    if spec.replicas > 10_000 {
        fail("spec.replicas", "must be at most 10000".to_owned());
    }
    for (key, value) in &spec.placement.requires {
        if key.is_empty() || value.is_empty() {
            fail(
                &format!("spec.placement.requires.{key}"),
                "labels and their values must not be empty".to_owned(),
            );
        }
    }
    if spec.placement.spread_by.as_deref() == Some("") {
        fail(
            "spec.placement.spreadBy",
            "must name a host label".to_owned(),
        );
    }
    if spec.limits.concurrency == Some(0) {
        fail("spec.limits.concurrency", "must be at least 1".to_owned());
    }
    if spec
        .limits
        .timeout
        .is_some_and(|timeout| timeout.0.is_zero())
    {
        fail("spec.limits.timeout", "must be longer than zero".to_owned());
    }
    for (index, route) in spec.routes.iter().enumerate() {
        if !route.path.starts_with('/') {
            fail(
                &format!("spec.routes[{index}].path"),
                "must start with /".to_owned(),
            );
        }
        if let Some(host) = &route.host
            && (host.is_empty() || host.contains("://") || host.contains('/'))
        {
            fail(
                &format!("spec.routes[{index}].host"),
                "must be a host name like hello.local, without scheme or path".to_owned(),
            );
        }
    }
    for key in spec.config.keys() {
        let valid = key.bytes().enumerate().all(|(at, byte)| {
            byte == b'_' || byte.is_ascii_alphabetic() || (at > 0 && byte.is_ascii_digit())
        });
        if key.is_empty() || !valid {
            fail(
                &format!("spec.config.{key}"),
                "must be an environment variable name (letters, digits, _)".to_owned(),
            );
        }
    }
    for (index, url) in spec.allowed_outbound.iter().enumerate() {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            fail(
                &format!("spec.allowedOutbound[{index}]"),
                format!("{url:?} must start with http:// or https://"),
            );
        }
    }
    if let Some(health) = &spec.health
        && !health.path.starts_with('/')
    {
        fail("spec.health.path", "must start with /".to_owned());
    }
    if let Some(rollout) = &spec.rollout {
        for (field, value) in [
            ("maxSurge", &rollout.max_surge),
            ("maxUnavailable", &rollout.max_unavailable),
        ] {
            if let Some(value) = value
                && !is_count_or_percent(value)
            {
                fail(
                    &format!("spec.rollout.{field}"),
                    "must be a count like 1 or a percentage like \"25%\"".to_owned(),
                );
            }
        }
    }
    if errors.is_empty() {
        Ok(App {
            name: parsed.metadata.name,
            namespace,
            spec: parsed.spec,
        })
    } else {
        Err(errors)
    }
}

fn is_count_or_percent(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::Number(number) => number.as_u64().is_some(),
        serde_json::Value::String(text) => text
            .strip_suffix('%')
            .and_then(|percent| percent.parse::<u32>().ok())
            .is_some_and(|percent| percent <= 100),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "apiVersion: shoal.dev/v1
kind: App
metadata: {name: hello}
spec:
  component: localhost:5000/examples/hello:1.0
  replicas: 3
  placement: {requires: {arch: x86_64}, spreadBy: zone}
  limits: {memory: 64Mi, cpu: 250m, timeout: 5s, concurrency: 100}
  routes: [{host: hello.local, path: /}]
  config: {GREETING: hello}
  allowedOutbound: [\"https://api.example.com\"]
  health: {path: /healthz}
  rollout: {maxSurge: 1, maxUnavailable: \"25%\", progressDeadline: 60s, autoRollback: true}
";

    #[test]
    fn the_design_example_parses() {
        let apps = parse(HELLO).unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!(apps[0].namespace, "default");
        assert_eq!(apps[0].spec.replicas, 3);
        assert_eq!(apps[0].spec.limits.memory.unwrap().0, 64 << 20);
    }

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn unknown_fields_and_bad_quantities_name_their_path() {
        let found = errors(&HELLO.replace("replicas: 3", "replicas: 3\n  replica: 2"));
        assert!(
            found[0].starts_with("document 1: spec.replica: unknown field `replica`"),
            "{found:?}"
        );
        let found = errors(&HELLO.replace("memory: 64Mi", "memory: 64Q"));
        assert!(found[0].contains("spec.limits.memory"), "{found:?}");
        assert!(found[0].contains("64Mi"), "{found:?}");
    }

    #[test]
    fn a_missing_component_and_a_bad_name_are_reported() {
        let found = errors(
            "apiVersion: shoal.dev/v1\nkind: App\nmetadata: {name: x}\nspec: {replicas: 1}\n",
        );
        assert!(found[0].contains("missing field `component`"), "{found:?}");
        let found = errors(&HELLO.replace("name: hello", "name: Hello_World"));
        assert!(found[0].contains("metadata.name"), "{found:?}");
    }

    #[test]
    fn every_document_is_checked_and_duplicates_refused() {
        let text = format!(
            "{HELLO}---\n{}---\n{HELLO}",
            HELLO.replace("cpu: 250m", "cpu: lots")
        );
        let found = errors(&text);
        assert!(
            found
                .iter()
                .any(|error| error.starts_with("document 2: spec.limits.cpu")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|error| error.contains("more than once")),
            "{found:?}"
        );
        assert!(
            errors("")
                .iter()
                .any(|error| error.contains("no documents"))
        );
    }
}

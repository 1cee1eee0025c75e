//! Manifests: YAML documents (`kind: App`, `Job` or `CronJob`) parsed and validated whole,
//! before anything is stored.
//!
//! Every error names the document, the field path and the reason, and every document of a
//! file is checked, so one run shows everything to fix.

use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::de::DeserializeOwned;
use shoal_lattice::jobs::{CronJobSpec, JobSpec};
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

/// One validated job from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Spec as written.
    pub spec: JobSpec,
}

/// One validated cron job from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct CronJob {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// Spec as written.
    pub spec: CronJobSpec,
}

/// Everything a manifest file declares.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Manifest {
    /// `kind: App` documents.
    pub apps: Vec<App>,
    /// `kind: Job` documents.
    pub jobs: Vec<Job>,
    /// `kind: CronJob` documents.
    pub cron_jobs: Vec<CronJob>,
}

/// One document, checked.
enum Object {
    App(Box<App>),
    Job(Job),
    CronJob(CronJob),
}

impl Object {
    /// `(kind, namespace, name)`, for duplicates.
    fn id(&self) -> (&'static str, &str, &str) {
        match self {
            Object::App(app) => ("app", &app.namespace, &app.name),
            Object::Job(job) => ("job", &job.namespace, &job.name),
            Object::CronJob(cron) => ("cron job", &cron.namespace, &cron.name),
        }
    }
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
    spec: serde_json::Value,
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
/// Every problem found, with document number and field path; nothing is returned unless
/// all documents are valid.
pub fn parse_all(text: &str) -> Result<Manifest, ManifestErrors> {
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    // Each document is read as a plain value first (serde-saphyr: a pure-Rust parser whose
    // budgets stop alias bombs and deep nesting, and whose errors carry line and column),
    // then checked field by field so every problem is reported with its path.
    // YAML 1.2's booleans, as Kubernetes reads manifests: `yes`, `no`, `on` and `off` are
    // strings (a country code `NO` stays one).
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    let mut input = text.as_bytes();
    let documents = serde_saphyr::read_with_options::<_, serde_json::Value>(&mut input, options);
    for (index, document) in documents.enumerate() {
        let number = index + 1;
        let value = match document {
            Ok(serde_json::Value::Null) => continue,
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
        match strict::<Document>(number, "", value) {
            Ok(document) => match check(number, document) {
                Ok(object) => objects.push((number, object)),
                Err(mut found) => errors.append(&mut found),
            },
            Err(mut found) => errors.append(&mut found),
        }
    }
    let mut seen = BTreeSet::new();
    for (document, object) in &objects {
        let (kind, namespace, name) = object.id();
        if !seen.insert((kind, namespace.to_owned(), name.to_owned())) {
            errors.push(ManifestError {
                document: *document,
                path: "metadata.name".to_owned(),
                reason: format!("{kind} {namespace}/{name} appears more than once in this file"),
            });
        }
    }
    if objects.is_empty() && errors.is_empty() {
        errors.push(ManifestError {
            document: 1,
            path: String::new(),
            reason: "the file holds no documents".to_owned(),
        });
    }
    if !errors.is_empty() {
        errors.sort_by_key(|error| error.document);
        return Err(ManifestErrors(errors));
    }
    let mut manifest = Manifest::default();
    for (_, object) in objects {
        match object {
            Object::App(app) => manifest.apps.push(*app),
            Object::Job(job) => manifest.jobs.push(job),
            Object::CronJob(cron) => manifest.cron_jobs.push(cron),
        }
    }
    Ok(manifest)
}

/// Parses and validates every document of `text`, all of which must be apps.
///
/// # Errors
/// Every problem found, as [`parse_all`]; a job or cron job is one.
pub fn parse(text: &str) -> Result<Vec<App>, ManifestErrors> {
    let manifest = parse_all(text)?;
    if manifest.jobs.is_empty() && manifest.cron_jobs.is_empty() {
        return Ok(manifest.apps);
    }
    Err(ManifestErrors(vec![ManifestError {
        document: 1,
        path: "kind".to_owned(),
        reason: "only apps are expected here".to_owned(),
    }]))
}

/// `value` as a `T`, refusing fields `T` does not have: records on the wire tolerate
/// fields a newer version adds; what people write does not (a misspelt or unsupported
/// field is an error, not silently dropped). Paths are under `prefix`.
fn strict<T: DeserializeOwned>(
    document: usize,
    prefix: &str,
    value: serde_json::Value,
) -> Result<T, Vec<ManifestError>> {
    let under = |path: String| match (prefix.is_empty(), path.as_str()) {
        (true, _) => path,
        (false, "." | "") => prefix.to_owned(),
        (false, _) => format!("{prefix}.{path}"),
    };
    let mut unknown = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let parsed = serde_path_to_error::deserialize::<_, T>(serde_ignored::Deserializer::new(
        value, &mut note,
    ));
    match parsed {
        Ok(_) if !unknown.is_empty() => Err(unknown
            .into_iter()
            .map(|path| ManifestError {
                document,
                reason: format!(
                    "unknown field `{}` (not one this version of Shoal knows)",
                    path.rsplit('.').next().unwrap_or(&path)
                ),
                path: under(path),
            })
            .collect()),
        Ok(value) => Ok(value),
        Err(error) => Err(vec![ManifestError {
            document,
            path: under(error.path().to_string()),
            reason: error.into_inner().to_string(),
        }]),
    }
}

fn check(document: usize, parsed: Document) -> Result<Object, Vec<ManifestError>> {
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
    let namespace = parsed
        .metadata
        .namespace
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
    let name = parsed.metadata.name;
    if let Err(error) = names::check_name("name", &name) {
        fail("metadata.name", error.to_string());
    }
    if let Err(error) = names::check_name("namespace", &namespace) {
        fail("metadata.namespace", error.to_string());
    }
    let object = match parsed.kind.as_str() {
        "App" => strict::<AppSpec>(document, "spec", parsed.spec).map(|spec| {
            for problem in spec.problems("spec") {
                fail(&problem.path, problem.reason);
            }
            Object::App(Box::new(App {
                name,
                namespace,
                spec,
            }))
        }),
        "Job" => strict::<JobSpec>(document, "spec", parsed.spec).map(|spec| {
            for problem in spec.problems("spec") {
                fail(&problem.path, problem.reason);
            }
            Object::Job(Job {
                name,
                namespace,
                spec,
            })
        }),
        "CronJob" => strict::<CronJobSpec>(document, "spec", parsed.spec).map(|spec| {
            for problem in crate::cron::problems(&name, &spec) {
                fail(&problem.path, problem.reason);
            }
            Object::CronJob(CronJob {
                name,
                namespace,
                spec,
            })
        }),
        other => {
            fail(
                "kind",
                format!("must be App, Job or CronJob, not {other:?}"),
            );
            return Err(errors);
        }
    };
    match object {
        Ok(object) if errors.is_empty() => Ok(object),
        Ok(_) => Err(errors),
        Err(mut found) => {
            errors.append(&mut found);
            Err(errors)
        }
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
    fn jobs_and_cron_jobs_parse_with_their_own_paths() {
        let text = "apiVersion: shoal.dev/v1
kind: Job
metadata: {name: backup}
spec: {component: r/backup:1, args: [--full], completions: 2, parallelism: 2}
---
apiVersion: shoal.dev/v1
kind: CronJob
metadata: {name: nightly, namespace: ops}
spec:
  schedule: '30 1 * * *'
  timeZone: Europe/Paris
  concurrencyPolicy: Forbid
  jobTemplate: {component: r/backup:1}
";
        let manifest = parse_all(text).unwrap();
        assert_eq!(manifest.jobs[0].spec.completions(), 2);
        assert_eq!(manifest.cron_jobs[0].namespace, "ops");
        // Apps only, where apps are expected.
        assert!(parse(text).is_err());
        let bad = text
            .replace("completions: 2", "completions: 0")
            .replace("'30 1 * * *'", "'61 * * * *'")
            .replace("Europe/Paris", "Mars/Base")
            .replace(
                "jobTemplate: {component: r/backup:1}",
                "jobTemplate: {component: r/backup:1, retries: 3}",
            );
        let found = errors(&bad);
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("document 1: spec.completions")),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("document 2: spec.jobTemplate.retries: unknown field")),
            "{found:?}"
        );
        let found = errors(
            &text
                .replace("'30 1 * * *'", "'61 * * * *'")
                .replace("Europe/Paris", "Mars/Base"),
        );
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("document 2: spec.timeZone")),
            "{found:?}"
        );
        let found = errors(&text.replace("'30 1 * * *'", "'61 * * * *'"));
        assert!(
            found
                .iter()
                .any(|e| e.starts_with("document 2: spec.schedule")),
            "{found:?}"
        );
        let found = errors(&text.replace("kind: Job", "kind: Deployment"));
        assert!(
            found[0].contains("must be App, Job or CronJob"),
            "{found:?}"
        );
        let long = "a".repeat(53);
        let found = errors(&text.replace("name: nightly", &format!("name: {long}")));
        assert!(found.iter().any(|e| e.contains("at most 52")), "{found:?}");
    }

    #[test]
    fn the_examples_parse() {
        for text in [
            include_str!("../../examples/apps/hello.yaml"),
            include_str!("../../examples/apps/two-tier.yaml"),
            include_str!("../../examples/apps/nightly.yaml"),
        ] {
            parse_all(text).unwrap();
        }
    }

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
    fn nested_unknown_fields_are_refused_though_records_tolerate_them() {
        let found = errors(&HELLO.replace("memory: 64Mi,", "memory: 64Mi, memroy: 1Gi,"));
        assert_eq!(
            found,
            [
                "document 1: spec.limits.memroy: unknown field `memroy` (not one this version of Shoal knows)"
            ],
        );
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

    #[test]
    fn bad_yaml_is_named_by_line_and_an_alias_bomb_is_refused() {
        // YAML 1.2 booleans: `yes` and `NO` are strings where a string goes.
        let apps = parse(&HELLO.replace("GREETING: hello", "GREETING: yes, COUNTRY: NO"))
            .expect("the manifest parses");
        assert_eq!(apps[0].spec.config["GREETING"], "yes");
        assert_eq!(apps[0].spec.config["COUNTRY"], "NO");
        let found = errors(&format!("{HELLO}---\nspec: [1, 2\n"));
        assert!(
            found
                .iter()
                .any(|error| error.starts_with("document 2: not valid YAML")
                    && error.contains("line ")),
            "{found:?}"
        );
        let found = errors(&HELLO.replace("replicas: 3", "replicas: 3\n  replicas: 4"));
        assert!(
            found.iter().any(|error| error.contains("duplicate")),
            "{found:?}"
        );
        // Nine to the eighth strings from a few hundred bytes: refused by the parser's
        // budget before it is expanded.
        let mut bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n".to_owned();
        for level in 1..8 {
            let previous = format!("*a{}", level - 1);
            bomb += &format!("a{level}: &a{level} [{}]\n", vec![previous; 9].join(", "));
        }
        let found = errors(&bomb);
        assert!(
            found
                .iter()
                .any(|error| error.contains("not valid YAML") && error.contains("budget")),
            "{found:?}"
        );
    }

    #[test]
    fn numbers_and_durations_have_bounds() {
        let found = errors(&HELLO.replace(
            "timeout: 5s, concurrency: 100",
            "timeout: 18446744073709551615s, concurrency: 0",
        ));
        assert!(
            found.contains(&"document 1: spec.limits.timeout: must be at most 1h".to_owned()),
            "{found:?}"
        );
        assert!(
            found
                .iter()
                .any(|error| error.contains("spec.limits.concurrency")),
            "{found:?}"
        );
        let found = errors(&HELLO.replace("replicas: 3", "replicas: 4294967295"));
        assert!(
            found[0].contains("spec.replicas: must be at most 10000"),
            "{found:?}"
        );
        let found = errors(&HELLO.replace("progressDeadline: 60s", "progressDeadline: 10000d"));
        assert!(
            found[0].contains("spec.rollout.progressDeadline"),
            "{found:?}"
        );
        let found = errors(&HELLO.replace("maxSurge: 1", "maxSurge: 99999999999"));
        assert!(found[0].contains("spec.rollout.maxSurge"), "{found:?}");
        let found = errors(&HELLO.replace("memory: 64Mi", "memory: 1Ei"));
        assert!(found[0].contains("spec.limits.memory"), "{found:?}");
        let found = errors(&HELLO.replace(
            "\"https://api.example.com\"",
            "\"https://api.example.com/path\"",
        ));
        assert!(found[0].contains("spec.allowedOutbound[0]"), "{found:?}");
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// Manifests with random edits never panic the parser, and whatever parses is
            /// within the lattice's bounds.
            #[test]
            fn mutated_manifests_never_panic(
                edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..10)
            ) {
                let mut bytes = HELLO.as_bytes().to_vec();
                for (at, byte, kind) in edits {
                    if bytes.is_empty() { break; }
                    let at = at.index(bytes.len());
                    match kind {
                        0 => bytes[at] = byte,
                        1 => bytes.insert(at, byte),
                        _ => { bytes.remove(at); }
                    }
                }
                let text = String::from_utf8_lossy(&bytes);
                if let Ok(apps) = parse(&text) {
                    for app in apps {
                        prop_assert!(app.spec.problems("spec").is_empty());
                    }
                }
            }

            /// Any text at all.
            #[test]
            fn random_text_never_panics(text in any::<String>()) {
                let _ = parse(&text);
            }

            /// Extreme numbers in every numeric field are refused, never accepted or a panic.
            #[test]
            fn extreme_numbers_are_refused(number in (u64::MAX / 2)..u64::MAX, field in 0..6usize) {
                let (from, to) = [
                    ("replicas: 3", format!("replicas: {number}")),
                    ("timeout: 5s", format!("timeout: {number}s")),
                    ("concurrency: 100", format!("concurrency: {number}")),
                    ("memory: 64Mi", format!("memory: {number}")),
                    ("maxSurge: 1", format!("maxSurge: {number}")),
                    ("progressDeadline: 60s", format!("progressDeadline: {number}")),
                ][field].clone();
                prop_assert!(parse(&HELLO.replace(from, &to)).is_err());
            }
        }
    }
}

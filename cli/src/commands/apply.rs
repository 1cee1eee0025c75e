//! `shoal apply`: validate a manifest whole, pin every component to a digest, then store
//! each app (a new revision when its template changed), job and cron job.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Args;
use shoal_lattice::api::{self, Applied};
use shoal_lattice::api::{Apply, ApplyJobs, GetTrust};
use shoal_scheduler::manifest;

use crate::lattice::LatticeArgs;
use crate::registry::RegistryArgs;

/// Create or update apps, jobs and cron jobs from a manifest (YAML, one or more
/// documents of kind App, Job or CronJob).
///
/// The whole file is validated and every component reference is resolved to a digest
/// before anything is stored, so a bad file changes nothing.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The manifest file, or - for standard input.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,

    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub async fn run(args: ApplyArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    apply_file(&args.file, &args.registry, lattice).await?;
    Ok(0)
}

/// Applies the manifest at `file` (`-` for stdin), printing what changed.
/// A component pinned: its digest, and the WASI version it needs when newer than 0.2.
type Pinned = (String, Option<String>);

pub async fn apply_file(
    file: &std::path::Path,
    registry: &RegistryArgs,
    lattice: &LatticeArgs,
) -> anyhow::Result<()> {
    let text = if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the manifest from standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    let manifest = manifest::parse_all(&text)?;

    // Pin every component before storing anything.
    let mut problems = Vec::new();
    // One client for every component: --username goes only to --registry-server.
    let client = registry.client()?;
    // A reference named by many documents (a thousand apps of one component) is resolved
    // once: one digest for all of them, and one registry round trip.
    // With the digest, the WASI version the component needs (read from its exports), so
    // placement gives a WASI 0.3 component only to hosts that run 0.3.
    let mut pinned: std::collections::HashMap<String, Result<Pinned, String>> =
        std::collections::HashMap::new();
    let mut pin = async |what: String, component: &str| -> Option<Pinned> {
        if !pinned.contains_key(component) {
            let result = registry
                .pull_component_with(&client, component)
                .await
                .map(|(pulled, bytes)| {
                    let wasi = shoal_oci::ComponentInfo::from_bytes(&bytes)
                        .ok()
                        .and_then(|info| info.wasi_version())
                        .filter(|version| version != shoal_lattice::records::WASI_02);
                    (pulled.digest.to_string(), wasi)
                })
                .map_err(|error| format!("{error:#}"));
            pinned.insert(component.to_owned(), result);
        }
        match pinned.get(component) {
            Some(Ok(pinned)) => Some(pinned.clone()),
            Some(Err(error)) => {
                problems.push(format!("  {what}: {error}"));
                None
            }
            None => None,
        }
    };
    let mut resolved = Vec::with_capacity(manifest.apps.len());
    for app in manifest.apps {
        let what = format!("app {}/{}: spec.component", app.namespace, app.name);
        if let Some(digest) = pin(what, &app.spec.component).await {
            resolved.push((app, digest));
        }
    }
    let mut jobs = Vec::new();
    for job in manifest.jobs {
        let what = format!("job {}/{}: spec.component", job.namespace, job.name);
        if let Some((digest, wasi)) = pin(what, &job.spec.component).await {
            jobs.push(api::JobManifest {
                namespace: job.namespace,
                name: job.name,
                spec: job.spec,
                digest,
                wasi,
            });
        }
    }
    let mut cron_jobs = Vec::new();
    for cron in manifest.cron_jobs {
        let what = format!(
            "cron job {}/{}: spec.jobTemplate.component",
            cron.namespace, cron.name
        );
        if let Some((digest, wasi)) = pin(what, &cron.spec.job_template.component).await {
            cron_jobs.push(api::JobManifest {
                namespace: cron.namespace,
                name: cron.name,
                spec: cron.spec,
                digest,
                wasi,
            });
        }
    }
    if !problems.is_empty() {
        bail!(
            "cannot resolve every component; nothing was applied:\n{}",
            problems.join("\n")
        );
    }

    let (api, _connection) = lattice.api("shoal apply").await?;
    let signed: Vec<(String, &str, &str, &str)> = resolved
        .iter()
        .map(|(app, (digest, _))| {
            (
                format!("app {}/{}", app.namespace, app.name),
                app.namespace.as_str(),
                app.spec.component.as_str(),
                digest.as_str(),
            )
        })
        .chain(jobs.iter().map(|job| {
            (
                format!("job {}/{}", job.namespace, job.name),
                job.namespace.as_str(),
                job.spec.component.as_str(),
                job.digest.as_str(),
            )
        }))
        .chain(cron_jobs.iter().map(|cron| {
            (
                format!("cron job {}/{}", cron.namespace, cron.name),
                cron.namespace.as_str(),
                cron.spec.job_template.component.as_str(),
                cron.digest.as_str(),
            )
        }))
        .collect();
    warn_unsigned(&api, &client, &signed).await;
    let resolved_any = !resolved.is_empty();
    let request = Apply {
        apps: resolved
            .into_iter()
            .map(|(app, (digest, wasi))| api::AppManifest {
                namespace: app.namespace,
                name: app.name,
                spec: app.spec,
                digest,
                wasi,
            })
            .collect(),
    };
    let applied: Vec<api::AppliedApp> = if resolved_any {
        api.call(request).await?
    } else {
        Vec::new()
    };
    for app in applied {
        let name = format!("app {}/{}", app.namespace, app.name);
        match app.applied {
            Applied::Created { replicas } => {
                println!("{name} created (revision 1, {replicas} replicas)");
            }
            Applied::Revised { revision, changes } => {
                println!("{name} configured: revision {revision}");
                for change in changes {
                    println!("  {change}");
                }
            }
            Applied::Scaled { from, to } => println!("{name} scaled: {from} → {to} replicas"),
            Applied::Updated { revision, changes } => {
                println!("{name} configured (revision {revision})");
                for change in changes {
                    println!("  {change}");
                }
            }
            Applied::Unchanged { revision } => println!("{name} unchanged (revision {revision})"),
        }
    }
    if !jobs.is_empty() || !cron_jobs.is_empty() {
        let applied: Vec<api::AppliedJob> = api.call(ApplyJobs { jobs, cron_jobs }).await?;
        for job in applied {
            println!("{} {}/{} {}", job.kind, job.namespace, job.name, job.change);
        }
    }
    Ok(())
}

/// Warns, before anything is stored, about each component that hosts will refuse to run
/// because the trust policies of its namespace need a signature it lacks. (Only a warning:
/// the signature may be added after the apply, and hosts check when replicas start.)
async fn warn_unsigned(
    api: &api::Client,
    client: &shoal_oci::Client,
    items: &[(String, &str, &str, &str)],
) {
    let mut policies: std::collections::HashMap<&str, Vec<shoal_oci::keys::PublicKey>> =
        std::collections::HashMap::new();
    for (what, namespace, component, digest) in items {
        if !policies.contains_key(namespace) {
            let views: Vec<shoal_lattice::trust::TrustView> = match api
                .call(GetTrust {
                    namespace: Some((*namespace).to_owned()),
                })
                .await
            {
                Ok(views) => views,
                Err(error) => {
                    tracing::debug!(%error, "cannot read the trust policies");
                    Vec::new()
                }
            };
            // The lattice's policy and this namespace's: what the API answered.
            let keys = shoal_lattice::trust::effective(
                views
                    .iter()
                    .filter(|view| view.namespace.as_deref().is_none_or(|ns| ns == *namespace))
                    .map(|view| view.keys.as_slice()),
            );
            policies.insert(namespace, crate::commands::trust::public_keys(&keys));
        }
        let Some(keys) = policies.get(namespace).filter(|keys| !keys.is_empty()) else {
            continue;
        };
        let (Ok(reference), Ok(digest)) = (
            shoal_oci::parse_reference(component),
            digest.parse::<shoal_oci::Digest>(),
        ) else {
            continue;
        };
        if let Err(error) = client.verify(&reference, &digest, keys).await {
            eprintln!(
                "warning: {what}: hosts will refuse to run {component} ({}): {error}",
                error.reason()
            );
        }
    }
}

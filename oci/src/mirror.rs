//! A component copied to, and pulled from, a mirror other than its registry (Shoal's
//! lattice keeps one): its parts (manifest, config, layer, signatures), the parts to copy
//! once a pull has verified them, and a pull from the mirror that checks every blob by
//! digest exactly as a registry pull does, so a mirror can lose or corrupt a copy but never
//! substitute one. Where the mirror keeps each part is the mirror's business.

use crate::artifact::Blob;
use crate::artifact::MAX_MANIFEST_SIZE;
use crate::client::{Client, PullSource, Pulled, mismatch};
use crate::signature::{MAX_MANIFEST as MAX_SIGNATURE_MANIFEST, SignatureManifest, signature_tag};
use crate::{Digest, Error, Reference};

/// A store that holds copies of components (read side).
pub trait Mirror: Sync {
    /// `part` of the component whose manifest digest is `component`, or `None` when the
    /// mirror does not hold it; an error when it cannot be read or is larger than `limit`
    /// bytes.
    fn object(
        &self,
        component: &Digest,
        part: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send;
}

/// The part that says a component's copy is complete: written last, read first.
pub const MANIFEST: &str = "manifest";
const CONFIG: &str = "config";
/// The part holding the component's bytes.
pub const LAYER: &str = "layer";
const SIGNATURES: &str = "signatures";

fn signature_part(payload: &Digest) -> String {
    format!("signature.{}", payload.hex())
}

/// One part of a component to store in a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Which part: `manifest`, `config`, `layer`, `signatures` or `signature.<hex>`.
    pub part: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Client {
    /// Pulls pinned `reference` (and the signatures the registry holds for it) and returns
    /// every part a mirror needs to serve it, the manifest last.
    ///
    /// # Errors
    /// As [`Client::pull`]; a registry that cannot list signatures counts as none.
    pub async fn mirror_parts(&self, reference: &Reference) -> Result<Vec<Part>, Error> {
        let pulled = self.pull(reference).await?;
        let digest = &pulled.digest;
        if let Err(error) = self.signatures(reference, digest).await {
            tracing::warn!(reference = %reference.whole(), %error, "copying the component without its signatures");
        }
        let missing = |what: &str| Error::Mirror {
            reference: reference.whole(),
            message: format!("the {what} left the cache while it was copied"),
        };
        let mut unused = Vec::new();
        let config = self
            .cached_bytes(&pulled.manifest.config.digest, &mut unused)?
            .ok_or_else(|| missing("config"))?;
        let layer = std::fs::read(&pulled.component_path).map_err(|_| missing("layer"))?;
        let manifest = self
            .cached_bytes(digest, &mut unused)?
            .ok_or_else(|| missing("manifest"))?;
        let mut parts = vec![
            Part {
                part: CONFIG.to_owned(),
                bytes: config,
            },
            Part {
                part: LAYER.to_owned(),
                bytes: layer,
            },
        ];
        if let Some((bytes, manifest)) = self.cached_signature_manifest(
            reference.resolve_registry(),
            reference.repository(),
            &signature_tag(digest),
        )? {
            for (blob, _) in manifest.signatures() {
                if let Some(payload) = self.cached_bytes(&blob.digest, &mut unused)? {
                    parts.push(Part {
                        part: signature_part(&blob.digest),
                        bytes: payload,
                    });
                }
            }
            parts.push(Part {
                part: SIGNATURES.to_owned(),
                bytes,
            });
        }
        parts.push(Part {
            part: MANIFEST.to_owned(),
            bytes: manifest,
        });
        Ok(parts)
    }

    /// Pulls pinned `reference` from `mirror` into the cache, checking the manifest, config
    /// and layer against their digests and the manifest's rules, and caching the signatures
    /// the mirror holds (each payload checked by digest; the signatures themselves are
    /// verified when used, as those from a registry).
    ///
    /// # Errors
    /// [`Error::Mirror`] when the mirror does not hold it or cannot be read,
    /// [`Error::DigestMismatch`] when what it holds is not what the digest names.
    pub async fn pull_from_mirror(
        &self,
        reference: &Reference,
        mirror: &impl Mirror,
    ) -> Result<Pulled, Error> {
        let whole = reference.whole();
        let failed = |message: String| Error::Mirror {
            reference: whole.clone(),
            message,
        };
        let Some(digest) = reference.digest() else {
            return Err(failed(
                "only a reference pinned to a digest can be".to_owned(),
            ));
        };
        let digest: Digest = digest
            .parse()
            .map_err(|_| failed(format!("{digest} is not a digest")))?;
        let get = async |part: &str, limit: u64| {
            mirror.object(&digest, part, limit).await.map_err(&failed)
        };

        let Some(manifest_bytes) = get(MANIFEST, MAX_MANIFEST_SIZE).await? else {
            return Err(failed("the lattice holds no copy of it".to_owned()));
        };
        let actual = Digest::of(&manifest_bytes);
        if actual != digest {
            return Err(Error::DigestMismatch {
                reference: whole,
                what: "manifest",
                expected: digest,
                actual,
            });
        }
        let manifest = self.check_manifest(reference, &manifest_bytes)?;
        for (what, part, blob) in [
            ("config", CONFIG, &manifest.config),
            ("layer", LAYER, &manifest.layer),
        ] {
            let bytes = get(part, blob.size)
                .await?
                .ok_or_else(|| failed(format!("its copy has no {what}")))?;
            check(reference, what, blob, &bytes)?;
            self.cache().write(&blob.digest, &bytes)?;
        }
        if let Some(bytes) = get(SIGNATURES, MAX_SIGNATURE_MANIFEST as u64).await?
            && let Ok(signatures) = SignatureManifest::parse(&bytes)
        {
            for (blob, _) in signatures.signatures() {
                if let Some(payload) = get(&signature_part(&blob.digest), blob.size).await?
                    && check(reference, "signature", &blob, &payload).is_ok()
                {
                    self.cache().write(&blob.digest, &payload)?;
                }
            }
            let at = Digest::of(&bytes);
            self.cache().write(&at, &bytes)?;
            self.cache().record_tag(
                reference.resolve_registry(),
                reference.repository(),
                &signature_tag(&digest),
                &at,
            )?;
        }
        self.cache().write(&digest, &manifest_bytes)?;
        self.load_cached(reference, &digest, PullSource::Mirror, &mut Vec::new())?
            .ok_or_else(|| failed("its copy did not stay in the cache".to_owned()))
    }
}

/// Checks `bytes` against `blob`'s size and digest.
fn check(
    reference: &Reference,
    what: &'static str,
    blob: &Blob,
    bytes: &[u8],
) -> Result<(), Error> {
    if bytes.len() as u64 > blob.size {
        return Err(Error::Oversize {
            reference: reference.whole(),
            what,
            limit: blob.size,
        });
    }
    let actual = Digest::of(bytes);
    if actual != blob.digest {
        return Err(mismatch(reference, what, blob, actual));
    }
    Ok(())
}

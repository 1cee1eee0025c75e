//! A component copied to, and pulled from, a mirror other than its registry (Shoal's
//! lattice keeps one): the names of its parts there, the parts to copy once a pull has
//! verified them, and a pull from the mirror that checks every blob by digest exactly as a
//! registry pull does, so a mirror can lose or corrupt a copy but never substitute one.

use crate::artifact::Blob;
use crate::artifact::MAX_MANIFEST_SIZE;
use crate::client::{Client, PullSource, Pulled};
use crate::signature::{MAX_MANIFEST as MAX_SIGNATURE_MANIFEST, SignatureManifest, signature_tag};
use crate::{Digest, Error, Reference};

/// A store of named objects that holds copies of components (read side).
pub trait Mirror: Sync {
    /// The object `name`, or `None` when the mirror does not hold it; an error when it
    /// cannot be read or is larger than `limit` bytes.
    fn object(
        &self,
        name: &str,
        limit: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send;
}

/// The name of one part of the component whose manifest digest is `manifest`:
/// `<manifest digest>/<part>`. Every part of one component shares the prefix, so a mirror
/// drops a component by its digest.
pub fn part_name(manifest: &Digest, part: &str) -> String {
    format!("{manifest}/{part}")
}

/// The manifest digest a part name belongs to (the text before the first `/`).
pub fn component_of(part: &str) -> &str {
    part.split_once('/')
        .map_or(part, |(component, _)| component)
}

/// The part that says a component's copy is complete: written last, read first.
pub const MANIFEST: &str = "manifest";
const CONFIG: &str = "config";
const LAYER: &str = "layer";
const SIGNATURES: &str = "signatures";

fn signature_part(payload: &Digest) -> String {
    format!("signature.{}", payload.hex())
}

/// One part to store in a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// Its name there ([`part_name`]).
    pub name: String,
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
                name: part_name(digest, CONFIG),
                bytes: config,
            },
            Part {
                name: part_name(digest, LAYER),
                bytes: layer,
            },
        ];
        let tag = signature_tag(digest);
        let registry = reference.resolve_registry();
        if let Some(signatures) = self
            .cache()
            .lookup_tag(registry, reference.repository(), &tag)?
            && let Some(bytes) = self.cached_bytes(&signatures, &mut unused)?
            && let Ok(manifest) = SignatureManifest::parse(&bytes)
        {
            for (blob, _) in manifest.signatures() {
                if let Some(payload) = self.cached_bytes(&blob.digest, &mut unused)? {
                    parts.push(Part {
                        name: part_name(digest, &signature_part(&blob.digest)),
                        bytes: payload,
                    });
                }
            }
            parts.push(Part {
                name: part_name(digest, SIGNATURES),
                bytes,
            });
        }
        parts.push(Part {
            name: part_name(digest, MANIFEST),
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
            mirror
                .object(&part_name(&digest, part), limit)
                .await
                .map_err(&failed)
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
        return Err(Error::DigestMismatch {
            reference: reference.whole(),
            what,
            expected: blob.digest.clone(),
            actual,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_of_a_component_is_named_under_its_manifest_digest() {
        let digest = Digest::of(b"manifest");
        let name = part_name(&digest, &signature_part(&Digest::of(b"payload")));
        assert!(name.starts_with(&format!("{digest}/signature.")));
        assert_eq!(component_of(&name), digest.to_string());
        assert_eq!(component_of("no-slash"), "no-slash");
    }
}

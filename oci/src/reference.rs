//! Parses OCI references (`[registry/]repository[:tag][@algorithm:hex]`) by hand, with the
//! grammar of the distribution spec and the same results as `oci_spec`'s parser.
//!
//! Why not that parser: it matches one large regular expression, and the compiled regex
//! and its match cache (about 10 MiB, measured with heaptrack) stay in memory for the life
//! of the process once a reference was parsed. Every host parses the reference of each app
//! it starts; on a small device that was a third of a host's memory with one app.

use oci_client::Reference;

/// The longest repository name (after the default registry's `library/` is added).
const NAME_TOTAL_LENGTH_MAX: usize = 255;
/// The longest tag.
const TAG_LENGTH_MAX: usize = 128;

const DOCKER_HUB_DOMAIN: &str = "docker.io";
const DOCKER_HUB_DOMAIN_LEGACY: &str = "index.docker.io";
const DOCKER_HUB_OFFICIAL_REPO_NAME: &str = "library";
const DEFAULT_TAG: &str = "latest";

/// Why a reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("the reference is empty")]
    Empty,
    /// A part of the repository path is not lowercase letters and digits with `.`, `_`,
    /// `__` or dashes between them.
    #[error(
        "{0:?} is not a repository path component (lowercase letters and digits, separated by '.', '_', '__' or '-')"
    )]
    Path(String),
    /// The registry is not a host name with an optional port.
    #[error("{0:?} is not a registry (a host name, optionally with :port)")]
    Registry(String),
    /// The tag has characters a tag cannot have, or is too long.
    #[error(
        "{0:?} is not a tag (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    )]
    Tag(String),
    /// The digest is not `algorithm:hex` of a known algorithm and length.
    #[error("{0:?} is not a digest (sha256: and 64 hex digits)")]
    Digest(String),
    /// The repository name is too long.
    #[error("the repository name is longer than {NAME_TOTAL_LENGTH_MAX} characters")]
    TooLong,
}

/// Parses `reference`; a reference with neither tag nor digest gets the tag `latest`, and
/// one with no registry is on Docker Hub (`docker.io/library/…`), as `docker pull` reads it.
///
/// # Errors
/// [`ReferenceError`], naming the part that is wrong.
pub fn parse(reference: &str) -> Result<Reference, ReferenceError> {
    if reference.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(check_digest(digest)?)),
        None => (reference, None),
    };
    // A colon after the last slash starts the tag; one before it is the registry's port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(check_tag(tag)?)),
        _ => (rest, None),
    };
    check_name(name)?;
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_TOTAL_LENGTH_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag.to_owned(), digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => {
            Reference::with_tag(registry, repository, tag.unwrap_or(DEFAULT_TAG).to_owned())
        }
    })
}

/// `name` is `[domain/]path-component(/path-component)*`.
fn check_name(name: &str) -> Result<(), ReferenceError> {
    let mut components = name.split('/');
    let first = components.next().unwrap_or_default();
    let rest: Vec<&str> = components.collect();
    for component in &rest {
        if !is_path_component(component) {
            return Err(ReferenceError::Path((*component).to_owned()));
        }
    }
    if is_path_component(first) || (!rest.is_empty() && is_domain(first)) {
        Ok(())
    } else if rest.is_empty() {
        Err(ReferenceError::Path(first.to_owned()))
    } else {
        Err(ReferenceError::Registry(first.to_owned()))
    }
}

/// `[a-z0-9]+` runs separated by `.`, `_`, `__` or one or more `-`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |byte: u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut separator = String::new();
    for &byte in bytes {
        if alnum(byte) {
            if !matches!(separator.as_str(), "" | "." | "_" | "__")
                && !separator.bytes().all(|byte| byte == b'-')
            {
                return false;
            }
            separator.clear();
        } else if matches!(byte, b'.' | b'_' | b'-') {
            separator.push(char::from(byte));
        } else {
            return false;
        }
    }
    true
}

/// Host name labels (letters, digits, inner dashes) separated by dots, then `:port`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = match domain.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (domain, None),
    };
    let label = |label: &str| {
        let bytes = label.as_bytes();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && bytes
                        .iter()
                        .all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-')
            }
            _ => false,
        }
    };
    host.split('.').all(label)
        && port
            .is_none_or(|port| !port.is_empty() && port.bytes().all(|byte| byte.is_ascii_digit()))
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(tag: &str) -> Result<&str, ReferenceError> {
    let word = |byte: u8| byte.is_ascii_alphanumeric() || byte == b'_';
    let valid = tag.len() <= TAG_LENGTH_MAX
        && tag.as_bytes().first().is_some_and(|&byte| word(byte))
        && tag
            .bytes()
            .all(|byte| word(byte) || byte == b'.' || byte == b'-');
    if valid {
        Ok(tag)
    } else {
        Err(ReferenceError::Tag(tag.to_owned()))
    }
}

/// A known algorithm and hex of its length: sha256 (64), sha384 (96), sha512 (128).
fn check_digest(digest: &str) -> Result<&str, ReferenceError> {
    let valid = match digest.split_once(':') {
        Some((algorithm, hex)) => {
            let length = match algorithm {
                "sha256" => Some(64),
                "sha384" => Some(96),
                "sha512" => Some(128),
                _ => None,
            };
            length == Some(hex.len()) && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
        }
        None => false,
    };
    if valid {
        Ok(digest)
    } else {
        Err(ReferenceError::Digest(digest.to_owned()))
    }
}

/// The registry and repository of a valid name, as Docker reads it: the first component is
/// the registry when it has a `.` or `:` or is `localhost`, else the registry is Docker Hub.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB_DOMAIN.to_owned(), name.to_owned()),
    };
    if domain == DOCKER_HUB_DOMAIN_LEGACY {
        DOCKER_HUB_DOMAIN.clone_into(&mut domain);
    }
    if domain == DOCKER_HUB_DOMAIN && !remainder.contains('/') {
        remainder = format!("{DOCKER_HUB_OFFICIAL_REPO_NAME}/{remainder}");
    }
    (domain, remainder)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA256: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    /// A case: input, registry, repository, tag, digest.
    type Case = (
        String,
        &'static str,
        &'static str,
        Option<&'static str>,
        Option<String>,
    );

    /// oci-spec's own cases, and a few of ours.
    #[test]
    fn parses_as_oci_spec_does() {
        let sha512 = format!("sha512:{}", "f".repeat(128));
        let cases: Vec<Case> = vec![
            (
                "busybox".into(),
                "docker.io",
                "library/busybox",
                Some("latest"),
                None,
            ),
            (
                "test.com:tag".into(),
                "docker.io",
                "library/test.com",
                Some("tag"),
                None,
            ),
            (
                "test.com:5000".into(),
                "docker.io",
                "library/test.com",
                Some("5000"),
                None,
            ),
            (
                "test.com/repo:tag".into(),
                "test.com",
                "repo",
                Some("tag"),
                None,
            ),
            (
                "test:5000/repo".into(),
                "test:5000",
                "repo",
                Some("latest"),
                None,
            ),
            (
                "test:5000/repo:tag".into(),
                "test:5000",
                "repo",
                Some("tag"),
                None,
            ),
            (
                format!("test:5000/repo@{SHA256}"),
                "test:5000",
                "repo",
                None,
                Some(SHA256.into()),
            ),
            (
                format!("test:5000/repo:tag@{SHA256}"),
                "test:5000",
                "repo",
                Some("tag"),
                Some(SHA256.into()),
            ),
            (
                "lowercase:Uppercase".into(),
                "docker.io",
                "library/lowercase",
                Some("Uppercase"),
                None,
            ),
            (
                "sub-dom1.foo.com/bar/baz/quux".into(),
                "sub-dom1.foo.com",
                "bar/baz/quux",
                Some("latest"),
                None,
            ),
            (
                "b.gcr.io/test.example.com/my-app:test.example.com".into(),
                "b.gcr.io",
                "test.example.com/my-app",
                Some("test.example.com"),
                None,
            ),
            (
                format!("xn--7o8h.com/myimage:xn--7o8h.com@{sha512}"),
                "xn--7o8h.com",
                "myimage",
                Some("xn--7o8h.com"),
                Some(sha512.clone()),
            ),
            (
                "foo_bar.com:8080".into(),
                "docker.io",
                "library/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "foo/foo_bar.com:8080".into(),
                "docker.io",
                "foo/foo_bar.com",
                Some("8080"),
                None,
            ),
            (
                "opensuse/leap:15.3".into(),
                "docker.io",
                "opensuse/leap",
                Some("15.3"),
                None,
            ),
            (
                "localhost/hello:1.0".into(),
                "localhost",
                "hello",
                Some("1.0"),
                None,
            ),
            (
                "index.docker.io/hello".into(),
                "docker.io",
                "library/hello",
                Some("latest"),
                None,
            ),
            (
                "127.0.0.1:5000/a__b/c---d:v1".into(),
                "127.0.0.1:5000",
                "a__b/c---d",
                Some("v1"),
                None,
            ),
        ];
        for (input, registry, repository, tag, digest) in cases {
            let parsed = parse(&input).unwrap_or_else(|error| panic!("{input}: {error}"));
            assert_eq!(parsed.registry(), registry, "{input}");
            assert_eq!(parsed.repository(), repository, "{input}");
            assert_eq!(parsed.tag(), tag, "{input}");
            assert_eq!(parsed.digest(), digest.as_deref(), "{input}");
        }
    }

    #[test]
    fn refuses_what_oci_spec_refuses() {
        for input in [
            "",
            ":justtag",
            "@sha256:ffff",
            "repo@sha256:ffffffffffffffffffffffffffffffffff",
            "validname@invaliddigest:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "Uppercase:tag",
            "test:5000/Uppercase/lowercase:tag",
            "aa/asdf$$^/aa",
            "a..b/c",
            "a/b._c",
            "a/b___c",
            "a/-b",
            "a/b-",
            "-host.com/repo",
            "host.com:/repo",
            "host.com:50a0/repo",
            "repo:-tag",
            "repo:.tag",
            "repo:tag with space",
            "localhost:5000/Bad Name:1.0",
            "localhost:5000/hello@sha256:1234",
        ] {
            assert!(parse(input).is_err(), "{input:?} parsed");
        }
        let long_tag = format!("repo:{}", "a".repeat(129));
        assert!(parse(&long_tag).is_err());
        assert!(parse(&format!("repo:{}", "a".repeat(128))).is_ok());
        let long_name = format!("host.com/{}", "a".repeat(256));
        assert_eq!(parse(&long_name).unwrap_err(), ReferenceError::TooLong);
    }

    #[test]
    fn agrees_with_oci_spec_on_generated_references() {
        // A small deterministic fuzz: both parsers accept the same strings, with the same parts.
        let alphabet = b"ab09AZ._-/:@";
        let mut state = 0x5eed_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let length = 1 + (next() % 12) as usize;
            let input: String = (0..length)
                .map(|_| char::from(alphabet[(next() % alphabet.len() as u64) as usize]))
                .collect();
            let ours = parse(&input).ok();
            let theirs = input.parse::<Reference>().ok();
            assert_eq!(
                ours.as_ref().map(Reference::whole),
                theirs.as_ref().map(Reference::whole),
                "{input:?}"
            );
        }
    }
}

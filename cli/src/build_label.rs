//! The build label: a few bytes at a known marker in the binary that say which build this
//! is (`shoal version`, and the version a host reports), set at compile time from
//! `SHOAL_BUILD_LABEL` or written into a built binary by a packager. Two builds of one
//! release tell themselves apart by it, which is what a fleet upgrade shows.

/// The bytes before the label, in two halves: whole, they are in the binary once, in the
/// stamp itself, where a packager's tool finds them.
const MARKER_HEAD: &[u8] = b"SHOAL-BUILD-";
const MARKER_TAIL: &[u8] = b"LABEL-1:";
const MARKER_LEN: usize = MARKER_HEAD.len() + MARKER_TAIL.len();
/// Most bytes of a label.
pub const LABEL_LEN: usize = 48;
const STAMP_LEN: usize = MARKER_LEN + LABEL_LEN;

/// The marker and the label, zero-padded.
#[used]
static STAMP: [u8; STAMP_LEN] = stamp(option_env!("SHOAL_BUILD_LABEL"));

const fn stamp(label: Option<&str>) -> [u8; STAMP_LEN] {
    let mut stamp = [0_u8; STAMP_LEN];
    let mut at = 0;
    while at < MARKER_HEAD.len() {
        stamp[at] = MARKER_HEAD[at];
        at += 1;
    }
    while at < MARKER_LEN {
        stamp[at] = MARKER_TAIL[at - MARKER_HEAD.len()];
        at += 1;
    }
    if let Some(label) = label {
        let label = label.as_bytes();
        let mut index = 0;
        while index < label.len() && index < LABEL_LEN {
            stamp[MARKER_LEN + index] = label[index];
            index += 1;
        }
    }
    stamp
}

/// This binary's label, if it has one.
pub fn label() -> Option<String> {
    // Read through an opaque reference: the bytes may have been written after the build.
    let stamp: &[u8; STAMP_LEN] = std::hint::black_box(&STAMP);
    parse(&stamp[MARKER_LEN..])
}

/// The label of the binary `bytes`, if it has the marker.
pub fn label_in(bytes: &[u8]) -> Option<String> {
    let marker = [MARKER_HEAD, MARKER_TAIL].concat();
    let at = bytes
        .windows(marker.len())
        .position(|window| window == marker.as_slice())?;
    let start = at + marker.len();
    parse(bytes.get(start..start + LABEL_LEN)?)
}

fn parse(bytes: &[u8]) -> Option<String> {
    let end = bytes
        .iter()
        .position(|byte| *byte == 0)
        .unwrap_or(bytes.len());
    let label = std::str::from_utf8(&bytes[..end]).ok()?;
    let clean = !label.is_empty()
        && label
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_'));
    clean.then(|| label.to_owned())
}

/// The version this binary reports: the release, and its label after a `+`.
pub fn version() -> String {
    version_with(label())
}

/// The version of a binary of this release with `label`.
pub fn version_with(label: Option<String>) -> String {
    match label {
        Some(label) => format!("{}+{label}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_written_after_the_marker_is_read_back_and_junk_is_not() {
        let mut binary = vec![7_u8; 100];
        binary.extend_from_slice(&stamp(None));
        binary.extend_from_slice(&[9; 10]);
        assert_eq!(label_in(&binary), None);
        let at = 100 + MARKER_LEN;
        binary[at..at + 5].copy_from_slice(b"v2.rc");
        assert_eq!(label_in(&binary).as_deref(), Some("v2.rc"));
        binary[at] = b'/';
        assert_eq!(label_in(&binary), None);
        assert_eq!(
            parse(&stamp(Some("nightly-7"))[MARKER_LEN..]).as_deref(),
            Some("nightly-7")
        );
    }
}

//! A host's cache size budget (`shoal host --cache-size`): the artifact cache and the
//! compiled-code cache together stay under it, least recently used first, and never lose
//! what a running replica needs to start again offline (its artifact's blobs and their
//! compiled code). Temporary files an interrupted write left are swept.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::time::Duration;

use shoal_oci::cache::{CachedFile, list_files};
use shoal_oci::{Cache, Digest};

/// Temporary files idle this long were left by a write that will not finish.
const STALE_TEMP: Duration = Duration::from_secs(10 * 60);

/// What one pass removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Cache files removed to fit the budget.
    pub files: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Temporary files swept.
    pub temporary: usize,
    /// Bytes kept, pinned ones included (may exceed the budget when pinned ones do).
    pub kept: u64,
}

/// The files to remove so `files` fit in `budget`: least recently used first, never a
/// pinned one.
pub fn over_budget(mut files: Vec<(CachedFile, bool)>, budget: u64) -> Vec<CachedFile> {
    let mut total: u64 = files.iter().map(|(file, _)| file.size).sum();
    files.sort_by(|(a, _), (b, _)| a.used.cmp(&b.used).then_with(|| a.name.cmp(&b.name)));
    let mut remove = Vec::new();
    for (file, pinned) in files {
        if total <= budget {
            break;
        }
        if !pinned {
            total = total.saturating_sub(file.size);
            remove.push(file);
        }
    }
    remove
}

/// Fits the artifact cache (`oci`) and the compiled-code cache (`compiled`) into `budget`,
/// keeping the artifacts with manifest digests `in_use` and their compiled code.
pub fn prune(oci: &Cache, compiled: &Path, in_use: &BTreeSet<String>, budget: u64) -> Pruned {
    let mut pruned = Pruned {
        temporary: oci.sweep(STALE_TEMP) + sweep_temporary(compiled),
        ..Pruned::default()
    };
    let pinned: HashSet<String> = in_use
        .iter()
        .filter_map(|digest| digest.parse::<Digest>().ok())
        .flat_map(|manifest| oci.closure(&manifest))
        .map(|digest| digest.hex().to_owned())
        .collect();
    // Compiled files are named `<layer hex>-<compile key>.cwasm`.
    let files: Vec<(CachedFile, bool)> = oci
        .blobs()
        .into_iter()
        .map(|file| {
            let keep = pinned.contains(&file.name);
            (file, keep)
        })
        .chain(list_files(compiled).into_iter().map(|file| {
            let layer = file.name.split('-').next().unwrap_or_default();
            let keep = pinned.contains(layer);
            (file, keep)
        }))
        .collect();
    let total: u64 = files.iter().map(|(file, _)| file.size).sum();
    let mut removed_bytes = 0;
    for file in over_budget(files, budget) {
        if std::fs::remove_file(&file.path).is_ok() {
            pruned.files += 1;
            removed_bytes += file.size;
        }
    }
    pruned.bytes = removed_bytes;
    pruned.kept = total.saturating_sub(removed_bytes);
    pruned
}

/// Removes the compiled cache's temporary files (`.tmp*`) idle for [`STALE_TEMP`].
fn sweep_temporary(dir: &Path) -> usize {
    list_files(dir)
        .into_iter()
        .filter(|file| file.name.starts_with(".tmp"))
        .filter(|file| file.used.elapsed().is_ok_and(|age| age >= STALE_TEMP))
        .filter(|file| std::fs::remove_file(&file.path).is_ok())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::time::SystemTime;

    fn file(name: &str, size: u64, age: u64) -> CachedFile {
        CachedFile {
            path: PathBuf::from(name),
            name: name.to_owned(),
            size,
            used: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000 - age),
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_pinned_ones_never() {
        let files = vec![
            (file("old-pinned", 40, 900), true),
            (file("old", 30, 800), false),
            (file("mid", 30, 500), false),
            (file("new", 30, 100), false),
        ];
        let names = |removed: Vec<CachedFile>| -> Vec<String> {
            removed.into_iter().map(|file| file.name).collect()
        };
        assert_eq!(names(over_budget(files.clone(), 130)), Vec::<String>::new());
        assert_eq!(names(over_budget(files.clone(), 100)), ["old"]);
        assert_eq!(names(over_budget(files.clone(), 50)), ["old", "mid", "new"]);
        // Pinned alone over the budget: everything else goes, the pinned one stays.
        assert_eq!(names(over_budget(files, 10)), ["old", "mid", "new"]);
    }
}

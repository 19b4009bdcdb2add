//! The data dir's disk: how much room its filesystem has left, measured
//! against the floor below which the node takes no more writes (so that it
//! stops before the disk is full, rather than have a write fail half-way).

use std::path::Path;

/// One mebibyte, the unit of the floor and of every message about it.
pub const MB: u64 = 1024 * 1024;

/// The bytes an unprivileged process may still write on the filesystem
/// holding `path` (`statvfs`: available blocks times the fragment size).
pub fn free_bytes(path: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(std::io::Error::from)?;
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

/// Why the filesystem of `data_dir` is too full to write to: `None` while it
/// has at least `floor` bytes free (always, for a floor of 0), else the
/// message every refusal carries. A filesystem that cannot be measured counts
/// as having room: the writes themselves then say what is wrong.
pub fn below_floor(data_dir: &Path, floor: u64) -> Option<String> {
    if floor == 0 {
        return None;
    }
    let free = free_bytes(data_dir).ok()?;
    (free < floor).then(|| {
        format!(
            "disk full at {}: {} MB free, below the floor of {} MB (--min-free-mb)",
            data_dir.display(),
            free / MB,
            floor / MB
        )
    })
}

/// Whether a storage error says the disk is full.
pub(crate) fn is_no_space(error: &str) -> bool {
    error.contains("No space left on device") || error.contains("os error 28")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_floor_above_the_free_space_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        assert_eq!(below_floor(dir.path(), 0), None);
        assert_eq!(below_floor(dir.path(), MB), None, "{free} bytes free");
        let why = below_floor(dir.path(), free + 1024 * MB).unwrap();
        assert!(
            why.starts_with(&format!("disk full at {}: ", dir.path().display())),
            "{why}"
        );
        assert!(why.contains("(--min-free-mb)"), "{why}");
    }
}

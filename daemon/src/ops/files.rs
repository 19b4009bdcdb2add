//! Files for providers' steps: copying and removing directory trees (with
//! their modes and symlinks), appending to and reading the end of log files,
//! and running such work off the async runtime. Errors are one line naming
//! the path.

use std::fs;
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::StepError;

/// Refuses a resource name or run id that would not be one path component.
pub fn check_component(what: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s == "." || s == ".." || s.contains('/') || s.contains('\0') {
        return Err(format!("{what} {s:?} cannot name a directory"));
    }
    Ok(())
}

/// Runs file work on the blocking pool, so a big copy does not stall the
/// runtime's other tasks.
pub async fn blocking<T, E>(f: impl FnOnce() -> Result<T, E> + Send + 'static) -> Result<T, E>
where
    T: Send + 'static,
    E: From<String> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| E::from(format!("a file task failed: {e}")))?
}

/// What [`copy_tree`] copied.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CopyStats {
    /// Regular files copied.
    pub files: u64,
    /// Directories created (the top one included).
    pub dirs: u64,
    /// Symlinks recreated (as symlinks, not followed).
    pub links: u64,
    /// Special files (sockets, pipes, devices) left out.
    pub skipped: u64,
}

/// Copies the directory `src` to `dst` (which must not exist): regular
/// files, directories and symlinks (as symlinks), with permission bits.
/// Special files are skipped. Stops with [`StepError::Cancelled`] if
/// `cancel` fires.
pub fn copy_tree(src: &Path, dst: &Path, cancel: &CancellationToken) -> Result<CopyStats, StepError> {
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let mut stats = CopyStats::default();
    let mut dirs = Vec::new();
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        let perms = fs::metadata(&from_dir)
            .map_err(|e| format!("cannot read {}: {e}", from_dir.display()))?
            .permissions();
        fs::create_dir(&to_dir).map_err(|e| format!("cannot create {}: {e}", to_dir.display()))?;
        dirs.push((to_dir.clone(), perms));
        stats.dirs += 1;
        let entries = fs::read_dir(&from_dir).map_err(|e| format!("cannot list {}: {e}", from_dir.display()))?;
        for entry in entries {
            if cancel.is_cancelled() {
                return Err(StepError::Cancelled);
            }
            let entry = entry.map_err(|e| format!("cannot list {}: {e}", from_dir.display()))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let ft = entry
                .file_type()
                .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
            if ft.is_dir() {
                stack.push((from, to));
            } else if ft.is_symlink() {
                let target = fs::read_link(&from).map_err(|e| format!("cannot read {}: {e}", from.display()))?;
                symlink(&target, &to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
                stats.links += 1;
            } else if ft.is_file() {
                fs::copy(&from, &to).map_err(|e| format!("cannot copy {} to {}: {e}", from.display(), to.display()))?;
                stats.files += 1;
            } else {
                stats.skipped += 1;
            }
        }
    }
    // Directory modes last, so read-only directories could be filled.
    for (dir, perms) in dirs.into_iter().rev() {
        fs::set_permissions(&dir, perms).map_err(|e| format!("cannot set the mode of {}: {e}", dir.display()))?;
    }
    Ok(stats)
}

/// Removes a file or directory tree; a missing one is fine. Read-only
/// directories (copied with their modes) are made writable first.
pub fn remove_tree(path: &Path) -> Result<(), String> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if !meta.is_dir() {
        return fs::remove_file(path).map_err(|e| format!("cannot remove {}: {e}", path.display()));
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(m) = fs::symlink_metadata(&dir) {
            if m.is_dir() {
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(m.permissions().mode() | 0o700));
                if let Ok(entries) = fs::read_dir(&dir) {
                    stack.extend(
                        entries
                            .flatten()
                            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                            .map(|e| e.path()),
                    );
                }
            }
        }
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot remove {}: {e}", path.display())),
    }
}

/// Appends one line to a file, creating it.
pub fn append_line(path: &Path, line: &str) -> Result<(), String> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The last `lines` lines of a file (from its last 8 KiB), for error
/// messages; a note if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut f = fs::File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(8192)))?;
        let mut bytes = Vec::new();
        f.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_is_copied_with_modes_and_symlinks_and_removed_read_only() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("sub/locked")).unwrap();
        fs::write(src.join("a.txt"), "a").unwrap();
        fs::write(src.join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(src.join("sub/run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::write(src.join("sub/locked/f"), "f").unwrap();
        fs::set_permissions(src.join("sub/locked"), fs::Permissions::from_mode(0o500)).unwrap();
        symlink("a.txt", src.join("link")).unwrap();

        let dst = tmp.path().join("deep/dst");
        let stats = copy_tree(&src, &dst, &CancellationToken::new()).unwrap();
        assert_eq!(
            stats,
            CopyStats {
                files: 3,
                dirs: 3,
                links: 1,
                skipped: 0
            }
        );
        assert_eq!(fs::read_to_string(dst.join("sub/locked/f")).unwrap(), "f");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dst.join("sub/run.sh")), 0o750);
        assert_eq!(mode(&dst.join("sub/locked")), 0o500);
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("a.txt"));

        remove_tree(&dst).unwrap();
        assert!(!dst.exists());
        remove_tree(&dst).unwrap();
        fs::set_permissions(src.join("sub/locked"), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_cancelled_copy_says_so() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("src")).unwrap();
        fs::write(tmp.path().join("src/f"), "x").unwrap();
        let cancel = CancellationToken::new();
        cancel.cancel();
        let got = copy_tree(&tmp.path().join("src"), &tmp.path().join("dst"), &cancel);
        assert_eq!(got, Err(StepError::Cancelled));
        assert!(!tmp.path().join("dst/f").exists());
    }

    #[test]
    fn log_tail_keeps_the_last_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("m.log");
        for i in 0..30 {
            append_line(&log, &format!("line {i}")).unwrap();
        }
        assert_eq!(log_tail(&log, 2), "line 28\nline 29");
        assert!(log_tail(&tmp.path().join("nope"), 2).starts_with("(cannot read "));
    }

    #[test]
    fn a_component_is_one_path_segment() {
        for bad in ["", ".", "..", "a/b", "a\0"] {
            assert!(check_component("run id", bad).is_err(), "{bad:?}");
        }
        check_component("run id", "r-1").unwrap();
    }
}

//! A small filesystem of its own (a tmpfs mounted for the test, which needs
//! root), for a node's data dir on a disk that can be filled up and freed
//! again.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One mebibyte.
pub const MB: u64 = 1024 * 1024;

/// Mounts a tmpfs of `size_mb` MiB at `path` (created if missing), left
/// mounted; or says why it cannot (not root, no `mount`).
pub fn mount(path: &Path, size_mb: u64) -> Result<(), String> {
    std::fs::create_dir_all(path).map_err(|e| format!("creating {}: {e}", path.display()))?;
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m,mode=0755"), "tmpfs"])
        .arg(path)
        .output()
        .map_err(|e| format!("running mount: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "mount -t tmpfs at {} failed (root is needed): {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Writes the file at `path` until its filesystem refuses (ENOSPC), in
/// 1 MiB chunks and then in pages and bytes; returns the MiB written.
pub fn fill(path: &Path) -> Result<u64, String> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    let mut written = 0u64;
    for size in [MB as usize, 4096, 1] {
        let chunk = vec![0x5au8; size];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => return Err(format!("writing {}: {e}", path.display())),
            }
        }
    }
    let _ = file.sync_all();
    Ok(written / MB)
}

/// A mounted tmpfs; unmounted when dropped.
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_mb` MiB at `path` (created if missing), or
    /// says why it cannot (not root, no `mount`).
    pub fn mount(path: &Path, size_mb: u64) -> Result<Tmpfs, String> {
        mount(path, size_mb)?;
        Ok(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The bytes still free on it.
    pub fn free_bytes(&self) -> u64 {
        let st =
            nix::sys::statvfs::statvfs(&self.path).unwrap_or_else(|e| panic!("statvfs {}: {e}", self.path.display()));
        st.blocks_available() as u64 * st.fragment_size() as u64
    }

    /// Writes the file `name` on it, 1 MiB at a time, until less than
    /// `free` bytes are left; returns its path.
    pub fn fill_until_free_below(&self, name: &str, free: u64) -> PathBuf {
        let path = self.path.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("creating {}: {e}", path.display()));
        let chunk = vec![0x5au8; MB as usize];
        while self.free_bytes() >= free {
            file.write_all(&chunk)
                .unwrap_or_else(|e| panic!("filling {}: {e}", path.display()));
        }
        file.sync_all()
            .unwrap_or_else(|e| panic!("syncing {}: {e}", path.display()));
        path
    }

    /// Writes the file `name` on it until the filesystem refuses (ENOSPC);
    /// returns its path.
    pub fn fill_completely(&self, name: &str) -> PathBuf {
        let path = self.path.join(name);
        fill(&path).unwrap_or_else(|e| panic!("{e}"));
        assert!(self.free_bytes() < MB, "{} bytes still free", self.free_bytes());
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a node killed a moment ago may still hold files open.
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

//! Storage faults: a full disk, failing writes and syncs, a lost database.
//!
//! - `disk-full`: every node's data dir lives on a tmpfs of its own
//!   (`<node>/disk`, [`DISK_MB`]), mounted before the node first starts; the
//!   fault fills it with a filler file until the kernel says no space is
//!   left, and heals by deleting the filler. Needs root (mount).
//! - `io-error`: every node runs with an LD_PRELOAD shim (`io_error.c`, built
//!   with `cc` into `target/nemesis/`) that fails write, pwrite, writev, fsync,
//!   fdatasync and sync_file_range with EIO on files under its data dir
//!   while the node's control file (`<node>/io-error`) exists; the fault
//!   creates it, healing deletes it. Needs a C compiler.
//! - `wipe`: kill -9 a node, delete its `db/`, and bring it back with the
//!   documented recovery, `opsd ... recover --rejoin HOST:PORT`, under a new
//!   id. Needs an opsd that has the `recover` subcommand.
//!
//! [`Storage::probe`] finds out which of these this machine and build can
//! deal, and why not.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::NodeConfig;

/// The size of each node's tmpfs in MiB: far more than a node writes in a
/// run, so only the filler fills it.
pub const DISK_MB: u64 = 512;

/// Which storage faults can be dealt here, and why not.
#[derive(Debug)]
pub struct Storage {
    /// `Ok` if data dirs can live on a tmpfs of their own.
    pub tmpfs: Result<(), String>,
    /// The shim's path, or why there is none.
    pub shim: Result<PathBuf, String>,
    /// `Ok` if opsd has the `recover` subcommand.
    pub recover: Result<(), String>,
    /// Mount points to unmount at the end.
    mounts: Mutex<Vec<PathBuf>>,
}

/// Runs a command; an error names it and what it wrote on stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec![program];
    all.extend_from_slice(args);
    super::net::run(&all, None).map(|_| ())
}

fn mount_tmpfs(at: &Path) -> Result<(), String> {
    crate::tmpfs::mount(at, DISK_MB)
}

/// Builds the io-error shim into `target/nemesis/`.
fn build_shim() -> Result<PathBuf, String> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/nemesis/io_error.c");
    let dir = crate::target_dir().join("nemesis");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // One file per process: runs at the same time must not overwrite a library another has loaded.
    let out = dir.join(format!("libio_error.{}.so", std::process::id()));
    let out = std::path::absolute(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    run(
        "cc",
        &[
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-o",
            &out.display().to_string(),
            &source.display().to_string(),
            "-ldl",
        ],
    )
    .map_err(|e| format!("building the io-error shim (install a C compiler: .ci/nemesis-deps): {e}"))?;
    Ok(out)
}

impl Storage {
    /// Finds out which storage faults can be dealt: mounts and unmounts a
    /// tmpfs (needs root), builds the shim (needs `cc`), asks opsd for
    /// `recover --help`.
    pub fn probe() -> Storage {
        let tmpfs = (|| {
            if !super::net::is_root() {
                return Err("mounting a tmpfs needs root".to_string());
            }
            let dir = tempfile::Builder::new()
                .prefix("opsd-nemesis-probe-")
                .tempdir()
                .map_err(|e| format!("a temp dir: {e}"))?;
            let at = dir.path().join("disk");
            mount_tmpfs(&at)?;
            run("umount", &[&at.display().to_string()])
        })();
        let recover = Command::new(crate::opsd_bin())
            .args(["recover", "--help"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running opsd: {e}"))
            .and_then(|s| {
                s.success()
                    .then_some(())
                    .ok_or_else(|| "this opsd has no `recover` subcommand".to_string())
            });
        Storage {
            tmpfs,
            shim: build_shim(),
            recover,
            mounts: Mutex::new(Vec::new()),
        }
    }

    /// Prepares a node before it first starts: its data dir on a tmpfs of
    /// its own, and the shim with its control file. Panics if the mount
    /// fails though the probe said it works.
    pub fn place(&self, config: &mut NodeConfig) {
        let home = config.data_dir.parent().expect("a data dir has a parent").to_path_buf();
        std::fs::create_dir_all(&home).unwrap_or_else(|e| panic!("creating {}: {e}", home.display()));
        let home = std::fs::canonicalize(&home).unwrap_or_else(|e| panic!("{}: {e}", home.display()));
        if self.tmpfs.is_ok() {
            let disk = home.join("disk");
            mount_tmpfs(&disk).unwrap_or_else(|e| panic!("{}: its own disk: {e}", config.name));
            self.mounts.lock().unwrap_or_else(|e| e.into_inner()).push(disk.clone());
            config.data_dir = disk.join("data");
        } else {
            config.data_dir = home.join("data");
        }
        if let Ok(shim) = &self.shim {
            config.env.push(("LD_PRELOAD".into(), shim.display().to_string()));
            config.env.push((
                "NEMESIS_IO_ERROR_FILE".into(),
                control_file(config).display().to_string(),
            ));
            config
                .env
                .push(("NEMESIS_IO_ERROR_DIR".into(), format!("{}/", config.data_dir.display())));
        }
    }

    /// Unmounts every node's disk (lazily: processes still using one keep it
    /// until they exit), so that the cluster's temp dir can be removed.
    pub fn unmount_all(&self) {
        for at in self.mounts.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            if let Err(e) = run("umount", &["-l", &at.display().to_string()]) {
                eprintln!("[nemesis] unmounting {}: {e}", at.display());
            }
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.unmount_all();
        if let Ok(shim) = &self.shim {
            let _ = std::fs::remove_file(shim);
        }
    }
}

/// The file whose existence makes the shim fail the node's writes.
fn control_file(config: &NodeConfig) -> PathBuf {
    config
        .data_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == config.name.as_str()))
        .unwrap_or_else(|| config.data_dir.parent().expect("a data dir has a parent"))
        .join("io-error")
}

/// The filler file on a node's disk.
fn filler(config: &NodeConfig) -> PathBuf {
    config
        .data_dir
        .parent()
        .expect("a data dir has a parent")
        .join("filler")
}

/// Fills the node's disk until no space is left; returns the MiB written.
pub fn fill(config: &NodeConfig) -> Result<u64, String> {
    crate::tmpfs::fill(&filler(config))
}

/// Frees the node's disk again.
pub fn unfill(config: &NodeConfig) -> Result<(), String> {
    let path = filler(config);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", path.display())),
    }
}

/// Makes the node's writes and syncs under its data dir fail (`on`) or work again.
pub fn set_io_error(config: &NodeConfig, on: bool) -> Result<(), String> {
    let path = control_file(config);
    let result = if on {
        std::fs::write(&path, b"EIO\n")
    } else {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    };
    result.map_err(|e| format!("{}: {e}", path.display()))
}

/// Deletes the node's database (`db/` under its data dir), as a lost disk
/// would; the node must be stopped.
pub fn wipe(config: &NodeConfig) -> Result<(), String> {
    let db = config.data_dir.join("db");
    std::fs::remove_dir_all(&db).map_err(|e| format!("removing {}: {e}", db.display()))
}

//! Docker for the scenarios of the docker provider: whether a Docker
//! engine is usable here (else the scenario skips, or fails under
//! `OPSD_TEST_STRICT`), a build directory for a test image that needs no
//! registry (`FROM scratch` plus the test backend, a shell and the shared
//! libraries they need), and what an opsd cluster made on the engine, listed
//! and removed by its labels with the engine's own CLI (the tests may use
//! it; the provider talks to the engine's API).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The label opsd puts on everything it makes: the opsd cluster's id.
pub const LABEL_CLUSTER: &str = "opsd.cluster";
/// The label: `KIND/NAME` of the resource it belongs to.
pub const LABEL_RESOURCE: &str = "opsd.resource";

/// Runs `docker ARGS`; its stdout, trimmed, or what went wrong.
pub fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether a Docker engine answers here (the `docker` CLI, `DOCKER_HOST`
/// or the local socket); `Err` says why not.
pub fn usable() -> Result<(), String> {
    docker(&["info", "--format", "{{.ID}}"])
        .and_then(|id| {
            if id.is_empty() {
                Err("docker info gave no engine ID".to_string())
            } else {
                Ok(())
            }
        })
        .map_err(|e| format!("no usable Docker engine: {e}"))
}

/// True if Docker is usable; otherwise reports the skip of `test` (a
/// failure under `OPSD_TEST_STRICT`) and returns false.
pub fn require(test: &str) -> bool {
    match usable() {
        Ok(()) => true,
        Err(why) => {
            crate::skip(test, &why);
            false
        }
    }
}

/// The shared libraries `ldd` lists for `binary` (absolute paths), none
/// for a static one.
pub fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .unwrap_or_else(|e| panic!("running ldd {}: {e}", binary.display()));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Copies `file` (following symlinks) into `root` at `at` (an absolute
/// path inside the image), with its mode.
pub fn copy_into(root: &Path, file: &Path, at: &Path) {
    let dest = root.join(at.strip_prefix("/").unwrap_or(at));
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
    }
    std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("copying {} to {}: {e}", file.display(), dest.display()));
}

/// A build directory (a `Dockerfile` and a root filesystem) for an image
/// that needs no registry: `FROM scratch`, holding `/opsd-test-backend`
/// (the service tests' HTTP backend), `/bin/sh` (the host's, for `start`
/// commands and `opsctl shell`) and the shared libraries both need. Its
/// `CMD` runs the backend on `$OPSD_HOST:$PORT`.
pub fn backend_image_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("opsd-docker-image-")
        .tempdir()
        .unwrap_or_else(|e| panic!("creating the image's build dir: {e}"));
    let root = dir.path().join("rootfs");
    let backend = crate::service::backend_bin();
    let shell = std::fs::canonicalize("/bin/sh").unwrap_or_else(|e| panic!("resolving /bin/sh: {e}"));
    copy_into(&root, &backend, Path::new("/opsd-test-backend"));
    copy_into(&root, &shell, Path::new("/bin/sh"));
    for binary in [&backend, &shell] {
        for lib in shared_libraries(binary) {
            copy_into(&root, &lib, &lib);
        }
    }
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nCMD [\"/bin/sh\", \"-c\", \"exec /opsd-test-backend --listen $OPSD_HOST:$PORT\"]\n",
    )
    .unwrap_or_else(|e| panic!("writing the Dockerfile: {e}"));
    dir
}

/// One container as the engine lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Its id (short).
    pub id: String,
    /// Its name.
    pub name: String,
    /// `running`, `exited`, `created`, ...
    pub state: String,
}

/// What one opsd cluster made on the engine: listed by its label, and
/// removed when this guard drops (even when the test fails). Create it
/// before the opsd cluster, so that it drops after the cluster's
/// processes are gone, and [`Owned::set`] the cluster's id once known.
#[derive(Default)]
pub struct Owned {
    cluster_id: Mutex<Option<String>>,
}

impl Owned {
    /// Everything labelled with opsd cluster `id` is this guard's.
    pub fn set(&self, id: &str) {
        *self.cluster_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(id.to_string());
    }

    /// The `--filter` arguments for this cluster's things, of `resource`
    /// (`KIND/NAME`) if given.
    fn filters(&self, resource: Option<&str>) -> Vec<String> {
        let id = self.cluster_id.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let id = id.unwrap_or_else(|| panic!("Owned::set was not called"));
        let mut f = vec!["--filter".to_string(), format!("label={LABEL_CLUSTER}={id}")];
        if let Some(r) = resource {
            f.extend(["--filter".to_string(), format!("label={LABEL_RESOURCE}={r}")]);
        }
        f
    }

    /// Runs `docker BASE FILTERS --format FORMAT`: one line per thing.
    fn try_list(&self, base: &[&str], resource: Option<&str>, format: &str) -> Result<Vec<String>, String> {
        let filters = self.filters(resource);
        let mut args: Vec<&str> = base.to_vec();
        args.extend(filters.iter().map(String::as_str));
        args.extend(["--format", format]);
        Ok(docker(&args)?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect())
    }

    /// [`Owned::try_list`], panicking on an error.
    fn list(&self, base: &[&str], resource: Option<&str>, format: &str) -> Vec<String> {
        self.try_list(base, resource, format).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The containers (running or not) of `resource`, or of the whole opsd
    /// cluster.
    pub fn containers(&self, resource: Option<&str>) -> Vec<Listed> {
        self.list(&["ps", "-a"], resource, "{{.ID}} {{.Names}} {{.State}}")
            .into_iter()
            .map(|l| {
                let mut w = l.split_whitespace().map(str::to_string);
                Listed {
                    id: w.next().unwrap_or_default(),
                    name: w.next().unwrap_or_default(),
                    state: w.next().unwrap_or_default(),
                }
            })
            .collect()
    }

    /// The networks of `resource`, or of the whole opsd cluster, by name.
    pub fn networks(&self, resource: Option<&str>) -> Vec<String> {
        self.list(&["network", "ls"], resource, "{{.Name}}")
    }

    /// The images of `resource`, or of the whole opsd cluster, by id (not
    /// the intermediate images of their builds, which go with them).
    pub fn images(&self, resource: Option<&str>) -> Vec<String> {
        self.list(&["images"], resource, "{{.ID}}")
    }

    /// The volumes of `resource`, or of the whole opsd cluster, by name.
    pub fn volumes(&self, resource: Option<&str>) -> Vec<String> {
        self.list(&["volume", "ls"], resource, "{{.Name}}")
    }

    /// Prints the last `lines` lines of every container's output (for a
    /// failing test).
    pub fn print_logs(&self, lines: usize) {
        for name in self.try_list(&["ps", "-a"], None, "{{.Names}}").unwrap_or_default() {
            let tail = Command::new("docker")
                .args(["logs", "--tail", &lines.to_string(), &name])
                .output()
                .map(|o| {
                    format!(
                        "{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                })
                .unwrap_or_default();
            eprintln!("==== container {name}, last {lines} lines ====\n{tail}");
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if self.cluster_id.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
            return;
        }
        // Never panics: it may run while a failed test unwinds.
        if std::thread::panicking() {
            self.print_logs(40);
        }
        let containers = self.try_list(&["ps", "-a"], None, "{{.ID}}").unwrap_or_default();
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(containers.iter().map(String::as_str));
            let _ = docker(&args);
        }
        for volume in self.try_list(&["volume", "ls"], None, "{{.Name}}").unwrap_or_default() {
            let _ = docker(&["volume", "rm", "-f", &volume]);
        }
        for network in self.try_list(&["network", "ls"], None, "{{.Name}}").unwrap_or_default() {
            let _ = docker(&["network", "rm", &network]);
        }
        for image in self.try_list(&["images", "-a"], None, "{{.ID}}").unwrap_or_default() {
            let _ = docker(&["rmi", "-f", &image]);
        }
    }
}

//! Running the documentation: the `sh` blocks of a Markdown page, in order,
//! in one bash, as a new user would type them.
//!
//! A block is run unless it is marked not to be (see [`crate::docs`]). Lines that build the binaries (`cargo build ...`) are
//! left out: the tests run the binaries already built.
//!
//! So that tours run in parallel with each other and with other tests, the
//! script keeps the documented ports (7700, 7701, 7710, ...) but gets a host of
//! its own: every `127.0.0.1` becomes a loopback address no one else uses
//! (`127.A.B.C`, see `addresses`), and every `/tmp/` a fresh temporary
//! directory. `opsctl`'s default address follows (`OPSD_ADDR` is set to the
//! rewritten `127.0.0.1:7700`). bash runs in a process group of its own, and
//! the whole group is killed when the tour ends (or the test fails), so
//! whatever the script started in the background goes with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{bin_dir, docs};

/// The ports the documentation's clusters use.
pub const DOC_PORTS: [u16; 6] = [7700, 7701, 7710, 7711, 7720, 7721];

/// How long a whole tour may take.
pub const TOUR_TIMEOUT: Duration = Duration::from_secs(240);

/// The `sh` blocks of `markdown` to run, in order (see [`crate::docs`]):
/// those under the heading `section`, or all of them with `None`.
pub fn shell_blocks(markdown: &str, section: Option<&str>) -> Vec<String> {
    let text = section.map_or(markdown, |heading| docs::section(markdown, heading));
    docs::command_blocks(&docs::fenced_blocks(text))
        .map(|b| b.text.clone())
        .collect()
}

/// The script bash runs: a prelude that sets the stage, then `blocks` with
/// their hosts and paths rewritten.
pub fn script(blocks: &[String], host: &str, dir: &Path) -> String {
    let mut text = String::new();
    text.push_str("set -eE -o pipefail\n");
    text.push_str("PS4='+ tour: '\nset -x\n");
    text.push_str(&format!("export PATH='{}':\"$PATH\"\n", bin_dir().display()));
    text.push_str(&format!("export OPSD_ADDR={host}:7700\n"));
    text.push_str(&format!("cd '{}'\n", dir.display()));
    let tmp = format!("{}/", dir.display());
    for block in blocks {
        for line in block.lines() {
            if line.trim_start().starts_with("cargo build") {
                continue;
            }
            text.push_str(&line.replace("127.0.0.1", host).replace("/tmp/", &tmp));
            text.push('\n');
        }
    }
    text
}

/// What a tour printed.
#[derive(Debug)]
pub struct TourOutput {
    /// Whether bash exited 0.
    pub success: bool,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr: the commands as run (`+ tour: ...`), opsctl's
    /// errors and notes, and the daemons' logs.
    pub stderr: String,
}

/// Kills a process group when dropped.
struct Group(i32);

impl Drop for Group {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}

/// Runs `script` in bash in `dir`, in a process group of its own that is
/// killed (with everything the script started, and the machines of the
/// clusters it made) when it ends; fails the test
/// if it takes longer than [`TOUR_TIMEOUT`].
pub async fn run(script: &str, dir: &Path) -> TourOutput {
    let path: PathBuf = dir.join("tour.sh");
    std::fs::write(&path, script).expect("writing the tour script");
    let stdout_path = dir.join("tour.stdout");
    let stderr_path = dir.join("tour.stderr");
    let mut child = tokio::process::Command::new("bash")
        .arg(&path)
        .current_dir(dir)
        .env_remove("OPSD_ADDR")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("creating the tour's stdout"))
        .stderr(std::fs::File::create(&stderr_path).expect("creating the tour's stderr"))
        .process_group(0)
        .spawn()
        .expect("starting bash");
    let group = Group(child.id().expect("bash's pid") as i32);
    let status = tokio::time::timeout(TOUR_TIMEOUT, child.wait()).await;
    drop(group);
    // The machines of the tour's clusters live in process groups of their own.
    crate::cluster::kill_machines_under(dir);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let output = TourOutput {
        success: matches!(status, Ok(Ok(s)) if s.success()),
        stdout: read(&stdout_path),
        stderr: read(&stderr_path),
    };
    if status.is_err() {
        panic!(
            "the tour did not finish in {TOUR_TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
            output.stdout, output.stderr
        );
    }
    output
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_gets_its_own_host_and_directory() {
        let blocks = vec!["cargo build --bin opsd\nopsd --data-dir /tmp/n1 --listen 127.0.0.1:7700 &".to_string()];
        let text = script(&blocks, "127.9.8.7", Path::new("/x"));
        assert!(
            text.contains("opsd --data-dir /x/n1 --listen 127.9.8.7:7700 &\n"),
            "{text}"
        );
        assert!(text.contains("export OPSD_ADDR=127.9.8.7:7700\n"), "{text}");
        assert!(!text.contains("cargo build"), "{text}");
    }
}

//! Running the documentation: the `sh` blocks of a Markdown page, in order,
//! in one bash, as a new user would type them.
//!
//! A block is run unless the line before its opening fence is
//! `<!-- not run -->`. Lines that build the binaries (`cargo build ...`) are
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
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{bin_dir, opsctl_bin};

/// What marks a block that is not meant to run.
pub const NOT_RUN: &str = "<!-- not run -->";

/// The ports the documentation's clusters use.
pub const DOC_PORTS: [u16; 6] = [7700, 7701, 7710, 7711, 7720, 7721];

/// How long a whole tour may take.
pub const TOUR_TIMEOUT: Duration = Duration::from_secs(240);

/// The `sh` blocks of `markdown` to run, in order; from the heading
/// `section` (a line equal to it) to the next heading of the same level, or
/// from the start to the end with `None`.
pub fn shell_blocks(markdown: &str, section: Option<&str>) -> Vec<String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let (start, end) = match section {
        None => (0, lines.len()),
        Some(heading) => {
            let start = lines
                .iter()
                .position(|l| *l == heading)
                .unwrap_or_else(|| panic!("no heading {heading:?}"));
            let level = heading.chars().take_while(|c| *c == '#').count();
            let end = lines[start + 1..]
                .iter()
                .position(|l| l.chars().take_while(|c| *c == '#').count() == level && l[level..].starts_with(' '))
                .map_or(lines.len(), |i| start + 1 + i);
            (start, end)
        }
    };
    let mut blocks = Vec::new();
    let mut i = start;
    while i < end {
        let fence = lines[i].trim_end();
        if fence.starts_with("```") {
            let runnable = fence == "```sh" && (i == 0 || lines[i - 1].trim() != NOT_RUN);
            let close = lines[i + 1..]
                .iter()
                .position(|l| l.trim_end() == "```")
                .map(|j| i + 1 + j)
                .unwrap_or_else(|| panic!("a code block opened at line {} is never closed", i + 1));
            if runnable {
                blocks.push(lines[i + 1..close].join("\n"));
            }
            i = close + 1;
        } else {
            i += 1;
        }
    }
    blocks
}

/// Whether this build's `opsctl do` takes `-q` (print just the run id).
pub fn opsctl_do_has_quiet() -> bool {
    let help = Command::new(opsctl_bin())
        .args(["do", "--help"])
        .output()
        .expect("running opsctl do --help");
    String::from_utf8_lossy(&help.stdout).contains("-q, --quiet")
}

/// The script bash runs: a prelude that sets the stage, then `blocks` with
/// their hosts and paths rewritten.
pub fn script(blocks: &[String], host: &str, dir: &Path, emulate_quiet: bool) -> String {
    let mut text = String::new();
    text.push_str("set -eE -o pipefail\n");
    text.push_str("PS4='+ tour: '\nset -x\n");
    text.push_str(&format!("export PATH='{}':\"$PATH\"\n", bin_dir().display()));
    text.push_str(&format!("export OPSD_ADDR={host}:7700\n"));
    text.push_str(&format!("cd '{}'\n", dir.display()));
    if emulate_quiet {
        // This build's `opsctl do` has no -q: print the run id from its JSON.
        text.push_str(concat!(
            "opsctl() {\n",
            "  if [ \"${1:-}\" = do ] && [ \"${@: -1}\" = -q ]; then\n",
            "    set -- \"${@:1:$#-1}\"\n",
            "    command opsctl --output json \"$@\" | sed -n 's/^  \"run_id\": \"\\(.*\\)\",$/\\1/p'\n",
            "  else\n",
            "    command opsctl \"$@\"\n",
            "  fi\n",
            "}\n",
        ));
    }
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
/// killed (with everything the script started) when it ends; fails the test
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
    fn blocks_come_from_the_section_in_order_and_can_be_left_out() {
        let page = "# Page\n```sh\nbefore\n```\n## Tour\ntext\n```sh\none\ntwo\n```\n<!-- not run -->\n```sh\nskipped\n```\n```\noutput\n```\n### Sub\n```sh\nthree\n```\n## Next\n```sh\nafter\n```\n";
        assert_eq!(shell_blocks(page, Some("## Tour")), vec!["one\ntwo", "three"]);
        assert_eq!(shell_blocks(page, None), vec!["before", "one\ntwo", "three", "after"]);
    }

    #[test]
    fn the_script_gets_its_own_host_and_directory() {
        let blocks = vec!["cargo build --bin opsd\nopsd --data-dir /tmp/n1 --listen 127.0.0.1:7700 &".to_string()];
        let text = script(&blocks, "127.9.8.7", Path::new("/x"), false);
        assert!(
            text.contains("opsd --data-dir /x/n1 --listen 127.9.8.7:7700 &\n"),
            "{text}"
        );
        assert!(text.contains("export OPSD_ADDR=127.9.8.7:7700\n"), "{text}");
        assert!(!text.contains("cargo build"), "{text}");
    }
}

//! Documentation run as a new user would run it: the fenced code blocks of
//! a page under `docs/` (files to write, commands to type) and the example
//! lines of `opsctl --help`, typed in order into bash in a scratch directory
//! with the real `opsctl` on `PATH`, each command required to succeed.
//!
//! A block whose first line is `# file: NAME` is a file the reader saves as
//! NAME; a `sh` block without it holds commands to type. A block right after
//! a line `<!-- not run -->` is not meant to run (output, or a sketch).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use tokio::process::Command;

use crate::{bin_dir, opsctl_bin};

/// How long a whole script of documented commands may take.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(600);

/// One fenced code block of a Markdown page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// The info string after the opening fence (`toml`, `sh`, or empty).
    pub lang: String,
    /// The lines between the fences, each ending in a newline.
    pub text: String,
    /// False if the line before its opening fence is [`NOT_RUN`].
    pub run: bool,
}

/// What marks a block that is not meant to run.
pub const NOT_RUN: &str = "<!-- not run -->";

impl Block {
    /// The file the block is, if its first line is `# file: NAME`.
    pub fn file_name(&self) -> Option<&str> {
        self.text.lines().next()?.strip_prefix("# file:").map(str::trim)
    }
}

/// The path of a page of the project's documentation, e.g. `docs/kinds.md`.
pub fn page_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

/// The text of a page of the project's documentation (see [`page_path`]).
pub fn page(relative: &str) -> String {
    let path = page_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The fenced code blocks of `markdown`, in order.
pub fn fenced_blocks(markdown: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    let mut previous = "";
    for line in markdown.lines() {
        match (open.as_mut(), line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    lang: info.trim().to_string(),
                    text: String::new(),
                    run: previous.trim() != NOT_RUN,
                })
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
        previous = line;
    }
    assert!(open.is_none(), "a code block is not closed");
    blocks
}

/// The part of `markdown` under the heading `heading` (a line equal to it),
/// up to the next heading of the same level or higher.
pub fn section<'a>(markdown: &'a str, heading: &str) -> &'a str {
    let start = markdown
        .find(&format!("{heading}\n"))
        .filter(|&i| i == 0 || markdown[..i].ends_with('\n'))
        .unwrap_or_else(|| panic!("no heading {heading:?}"));
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body = &markdown[start + heading.len() + 1..];
    let mut offset = 0;
    let mut in_code = false;
    for line in body.split_inclusive('\n') {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        }
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if !in_code && (1..=level).contains(&hashes) && line[hashes..].starts_with(' ') {
            break;
        }
        offset += line.len();
    }
    &body[..offset]
}

/// The `sh` blocks of `blocks` that are commands to run: not files, not
/// marked [`NOT_RUN`].
pub fn command_blocks(blocks: &[Block]) -> impl Iterator<Item = &Block> {
    blocks
        .iter()
        .filter(|b| b.lang == "sh" && b.run && b.file_name().is_none())
}

/// Writes every `# file: NAME` block of `blocks` into `dir`; returns the names.
pub fn write_files(blocks: &[Block], dir: &Path) -> Vec<String> {
    let mut names = Vec::new();
    for block in blocks {
        if let Some(name) = block.file_name() {
            std::fs::write(dir.join(name), &block.text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
            names.push(name.to_string());
        }
    }
    names
}

/// The commands of the `sh` blocks that are not files, in order (see [`commands`]).
pub fn shell_commands(blocks: &[Block]) -> Vec<String> {
    command_blocks(blocks).flat_map(|b| commands(&b.text)).collect()
}

/// The commands of a shell text: one a line, a line ending in `\` joined with
/// the next, blank and comment-only lines left out.
pub fn commands(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            continue;
        }
        pending.push_str(line);
        let command = std::mem::take(&mut pending);
        let trimmed = command.trim();
        if !trimmed.is_empty() && !trimmed.starts_with('#') {
            out.push(trimmed.to_string());
        }
    }
    out
}

/// `text` quoted for the shell, in single quotes.
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A bash fragment that shows `command` on stderr (`+ command`), runs it as
/// typed, and ends the script naming it if it exits non-zero.
pub fn checked(command: &str) -> String {
    let quoted = shell_quote(command);
    format!(
        "printf '+ %s\\n' {quoted} >&2\n{command}\nrc=$?\n\
         if [ $rc -ne 0 ]; then printf 'FAILED (exit %s): %s\\n' $rc {quoted} >&2; exit 1; fi\n"
    )
}

/// Runs `script` with bash in `dir` as a user at a terminal would: `dir` is
/// the working directory and `HOME`, the directory of `opsctl` comes first on
/// `PATH`, and `OPSD_ADDR` is `addr`.
pub async fn bash(dir: &Path, addr: &str, script: &str) -> Output {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let _ = opsctl_bin(); // a missing build fails here, saying what to run
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("HOME", dir)
        .env("PATH", path)
        .env("OPSD_ADDR", addr)
        .env_remove("OPSD_CA")
        .env_remove("OPSD_TOKEN")
        .envs(crate::access::opsctl_env(addr))
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run bash: {e}"),
        Err(_) => panic!("the documented commands did not finish in {SCRIPT_TIMEOUT:?}"),
    }
}

/// Panics with the script's output unless it succeeded.
pub fn assert_succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_files_and_commands_are_read() {
        let page = "text\n```toml\n# file: a.toml\nx = 1\n```\n\n```sh\n# a comment\nopsctl a \\\n  --b\n\nrun=$(c) # why\n```\n```rust\nfn f() {}\n```\n";
        let blocks = fenced_blocks(page);
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0].file_name(), Some("a.toml"));
        assert_eq!(blocks[0].text, "# file: a.toml\nx = 1\n");
        assert_eq!(blocks[1].file_name(), None);
        assert_eq!(shell_commands(&blocks), ["opsctl a   --b", "run=$(c) # why"]);
    }

    #[test]
    fn sections_and_blocks_not_run_are_kept_apart() {
        let page = "# Page\n```sh\nbefore\n```\n## Tour\ntext\n```sh\none\n# a comment, not a heading\ntwo\n```\n<!-- not run -->\n```sh\nskipped\n```\n```\noutput\n```\n### Sub\n```sh\nthree\n```\n## Next\n```sh\nafter\n```\n";
        let texts = |md: &str| -> Vec<String> { command_blocks(&fenced_blocks(md)).map(|b| b.text.clone()).collect() };
        let tour = "one\n# a comment, not a heading\ntwo\n";
        assert_eq!(texts(section(page, "## Tour")), [tour, "three\n"]);
        assert_eq!(texts(page), ["before\n", tour, "three\n", "after\n"]);
    }

    #[tokio::test]
    async fn a_failing_command_stops_the_script_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let script = [
            checked("true"),
            checked("test -f 'missing file'"),
            checked("touch after"),
        ]
        .concat();
        let out = bash(dir.path(), "127.0.0.1:1", &script).await;
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("FAILED (exit 1): test -f 'missing file'"), "{stderr}");
        assert!(!dir.path().join("after").exists());
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

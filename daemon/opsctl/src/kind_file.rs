//! Kind files as `opsctl kinds apply` sends them: a work state may name its
//! script as a file beside the kind file, `run = { file = "deploy.sh" }`.
//! opsctl reads each such file and puts the script in the kind's source in
//! its place (`run = '''...'''`), so the server receives, stores and
//! replicates exactly the inline form, and every node runs the same script.
//! The server never reads a client's paths; it refuses a `{ file = ... }` that
//! reaches it unread.

use std::io::Read;
use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// The largest script file `run = { file = ... }` may name: 128 KiB. The whole
/// kind, scripts included, must stay within the server's 256 KiB.
pub const MAX_RUN_FILE: usize = 128 * 1024;

/// Replaces every `run = { file = "PATH" }` in `source` by the script read
/// from PATH, relative to `base` (the kind file's directory). A source with
/// none is returned unchanged, byte for byte, as is one that is not valid
/// TOML (the server's answer names the line). The error names the kind, the
/// state, the key and the path as resolved.
pub fn resolve_run_files(source: &str, base: &Path) -> Result<String, String> {
    let Ok(mut doc) = source.parse::<DocumentMut>() else {
        return Ok(source.to_string());
    };
    let prefix = match doc.get("kind").and_then(Item::as_str) {
        Some(name) => format!("kind {name:?}"),
        None => "kind file".to_string(),
    };
    let Some(states) = doc.get_mut("states").and_then(Item::as_table_like_mut) else {
        return Ok(source.to_string());
    };
    let mut changed = false;
    for (state, item) in states.iter_mut() {
        let Some(run) = item.as_table_like_mut().and_then(|t| t.get_mut("run")) else {
            continue;
        };
        let Some(table) = run.as_table_like() else {
            continue;
        };
        let at = |msg: String| format!("{prefix}: state {:?}: run: {msg}", state.get());
        let file = file_of(table).map_err(at)?;
        let script = read_script(&base.join(&file)).map_err(|e| at(format!("{file}: {e}")))?;
        // `kinds show` tells where the script came from.
        let mut value = Value::from(script);
        if let Some(old) = run.as_value() {
            *value.decor_mut() = old.decor().clone();
        }
        value.decor_mut().set_suffix(format!("    # from {file}"));
        *run = Item::Value(value);
        changed = true;
    }
    Ok(if changed { doc.to_string() } else { source.to_string() })
}

/// The PATH of a `{ file = "PATH" }` table, the only key it may have.
fn file_of(table: &dyn TableLike) -> Result<String, String> {
    for (key, _) in table.iter() {
        if key != "file" {
            return Err(format!(
                "unknown key {key:?}: give the script itself (run = \"...\") or a file (run = {{ file = \"deploy.sh\" }})"
            ));
        }
    }
    match table.get("file").map(|f| f.as_str()) {
        Some(Some(file)) if !file.is_empty() => Ok(file.to_string()),
        Some(_) => Err("file: expected a non-empty path, relative to the kind file, like \"deploy.sh\"".into()),
        None => Err(
            "an empty table: give the script itself (run = \"...\") or a file (run = { file = \"deploy.sh\" })".into(),
        ),
    }
}

/// Reads a script file: UTF-8 text of at most [`MAX_RUN_FILE`] bytes. The
/// error shows the path as resolved.
fn read_script(path: &Path) -> Result<String, String> {
    let shown = std::path::absolute(path).unwrap_or_else(|_| PathBuf::from(path));
    let shown = shown.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {shown}: {}", plain(&e)))?;
    let mut bytes = Vec::new();
    file.take(MAX_RUN_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {shown}: {}", plain(&e)))?;
    if bytes.len() > MAX_RUN_FILE {
        return Err(format!(
            "{shown} is more than {} KiB, the limit for a script file",
            MAX_RUN_FILE / 1024
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "{shown} is not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        )
    })
}

/// An I/O error without the `(os error N)` suffix.
fn plain(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIND: &str = r#"# app.toml
kind = "app"
initial = "deploying"
provider = "exec"

[states.deploying]
work = true
run = { file = "deploy.sh" }    # the script beside this file
next = "ready"
fail = "ready"

[states.ready]
on = { deploy = "deploying" }
"#;

    fn dir_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.path().join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn a_run_file_becomes_the_inline_script() {
        let script = "#!/bin/sh\necho \"deploying $OPSD_NAME\"\necho 'it''s done' \\\n  && true\n";
        let dir = dir_with(&[("deploy.sh", script.as_bytes())]);
        let resolved = resolve_run_files(KIND, dir.path()).unwrap();
        let table: toml::Table = resolved.parse().unwrap();
        assert_eq!(table["states"]["deploying"]["run"].as_str(), Some(script), "{resolved}");
        // The rest of the file is kept as written; the script says where it came from.
        assert!(resolved.starts_with("# app.toml\nkind = \"app\"\n"), "{resolved}");
        assert!(resolved.contains("\n'''    # from deploy.sh\nnext = "), "{resolved}");
        assert!(!resolved.contains("file ="), "{resolved}");
    }

    #[test]
    fn every_form_of_the_run_table_is_read() {
        let dir = dir_with(&[("a.sh", b"echo a\n"), ("b.sh", b"echo b\n")]);
        let source = "kind = \"x\"\n[states.one]\nwork = true\n[states.one.run]\nfile = \"a.sh\"\n\
                      [states.two]\nrun.file = \"b.sh\"\n";
        let resolved = resolve_run_files(source, dir.path()).unwrap();
        let table: toml::Table = resolved.parse().unwrap();
        assert_eq!(table["states"]["one"]["run"].as_str(), Some("echo a\n"), "{resolved}");
        assert_eq!(table["states"]["two"]["run"].as_str(), Some("echo b\n"), "{resolved}");
    }

    #[test]
    fn a_source_without_run_files_is_sent_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let inline = KIND.replace("{ file = \"deploy.sh\" }", "'''\necho hi\n'''");
        assert_eq!(resolve_run_files(&inline, dir.path()).unwrap(), inline);
        let broken = "kind = = \"app\"\n[states.x]\nrun = { file = \"nope\" }\n";
        assert_eq!(resolve_run_files(broken, dir.path()).unwrap(), broken);
    }

    #[test]
    fn a_missing_file_names_the_state_the_key_and_the_resolved_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = resolve_run_files(KIND, dir.path()).unwrap_err();
        let path = dir.path().join("deploy.sh");
        assert_eq!(
            e,
            format!(
                "kind \"app\": state \"deploying\": run: deploy.sh: cannot read {}: No such file or directory",
                path.display()
            )
        );
    }

    #[test]
    fn a_file_that_is_not_text_or_too_big_is_refused() {
        let dir = dir_with(&[("deploy.sh", b"echo \xff\xfe\n")]);
        let e = resolve_run_files(KIND, dir.path()).unwrap_err();
        assert!(
            e.starts_with("kind \"app\": state \"deploying\": run: deploy.sh: "),
            "{e}"
        );
        assert!(e.ends_with("is not UTF-8 text (invalid byte at offset 5)"), "{e}");

        let big = vec![b'#'; MAX_RUN_FILE + 1];
        let dir = dir_with(&[("deploy.sh", &big)]);
        let e = resolve_run_files(KIND, dir.path()).unwrap_err();
        assert!(e.ends_with("is more than 128 KiB, the limit for a script file"), "{e}");
        let dir = dir_with(&[("deploy.sh", &big[1..])]);
        resolve_run_files(KIND, dir.path()).unwrap();
    }

    #[test]
    fn a_run_table_with_other_keys_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (run, says) in [
            ("{ path = \"deploy.sh\" }", "unknown key \"path\""),
            ("{ file = 3 }", "file: expected a non-empty path"),
            ("{ file = \"\" }", "file: expected a non-empty path"),
            ("{}", "an empty table"),
        ] {
            let e = resolve_run_files(&KIND.replace("{ file = \"deploy.sh\" }", run), dir.path()).unwrap_err();
            assert!(e.starts_with("kind \"app\": state \"deploying\": run: "), "{run}: {e}");
            assert!(e.contains(says), "{run}: {e}");
        }
    }
}

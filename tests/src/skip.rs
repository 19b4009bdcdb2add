//! Tests that need something a developer's machine may lack (root for network
//! namespaces, the Python virtualenv, Docker) skip there with a visible
//! message, and fail instead when `OPSD_TEST_STRICT` is set (CI sets it), so a
//! skip can never hide in CI. Every skip is also recorded in
//! `target/test-skips.txt`, which `make test` prints at the end of its run.

use std::io::Write;
use std::path::PathBuf;

/// The file every skip is appended to, one line each: `TEST: WHY`.
pub fn skips_file() -> PathBuf {
    crate::target_dir().join("test-skips.txt")
}

/// Whether a check that cannot run here must fail instead of skipping:
/// `OPSD_TEST_STRICT` is set to anything but empty or `0`.
pub fn strict() -> bool {
    strict_value(std::env::var_os("OPSD_TEST_STRICT").as_deref())
}

fn strict_value(v: Option<&std::ffi::OsStr>) -> bool {
    v.is_some_and(|v| !v.is_empty() && v != "0")
}

/// Skips (all or part of) `test` because of `why`: panics in strict mode;
/// otherwise prints `SKIPPED: test: why` to stderr (past the test harness's
/// output capture, so it is seen) and records it for `make test`'s summary.
pub fn skip(test: &str, why: &str) {
    if strict() {
        panic!("OPSD_TEST_STRICT is set and {test} cannot run here: {why}");
    }
    let line = format!("{test}: {why}");
    let _ = writeln!(std::io::stderr(), "SKIPPED: {line}");
    let path = skips_file();
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(&path) {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::strict_value;

    #[test]
    fn strict_means_set_and_not_empty_and_not_zero() {
        assert!(!strict_value(None));
        assert!(!strict_value(Some(OsStr::new(""))));
        assert!(!strict_value(Some(OsStr::new("0"))));
        assert!(strict_value(Some(OsStr::new("1"))));
        assert!(strict_value(Some(OsStr::new("yes"))));
    }
}

//! The log mark: the highest Raft log index known to be on disk, kept in a
//! small file beside the database (`log.mark`), so that a write-ahead log cut
//! short is told apart from a crash's torn tail.
//!
//! The rule it keeps: the log's last index (or, once purged, its purge point)
//! is never below the mark. It holds because
//! - the mark is raised only after an fsync of the write-ahead log, to the
//!   last index written before that fsync began;
//! - the raise is a plain overwrite without an fsync of its own: a power loss
//!   can leave the mark behind the log, never ahead of it (no false alarm),
//!   while a kill -9 keeps it (the page cache survives the process);
//! - before the log is truncated (a leader's conflicting entries replaced),
//!   the mark is lowered below the cut, durably (with an fsync);
//! - a purge never lowers the log's last index: it records a purge point at
//!   least as high as every entry it removes.
//!
//! So a start that finds the log ending before the mark has lost entries it
//! had fsynced and acknowledged: the WAL was cut short or lost its tail.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The mark's file name in the data dir.
pub const MARK_FILE: &str = "log.mark";

/// Reads the mark in `path`: `Ok(None)` if there is none yet (or only what a
/// power loss leaves of a first write: nothing, or zeros), an error naming
/// the file if it holds anything else.
pub fn read_mark(path: &Path) -> Result<Option<u64>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    if bytes.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let text = String::from_utf8_lossy(&bytes);
    text.trim()
        .parse::<u64>()
        .map(Some)
        .map_err(|_| format!("{} does not hold a log index: {:?}", path.display(), text.trim()))
}

/// The mark's fixed-size text: one write of it replaces the whole content
/// in place (it fits in one disk sector), so it is never half old, half new.
fn mark_bytes(index: u64) -> [u8; 21] {
    let mut out = [b'\n'; 21];
    out[..20].copy_from_slice(format!("{index:020}").as_bytes());
    out
}

/// The mark of a running log store.
pub(crate) struct LogMark {
    path: PathBuf,
    state: Mutex<State>,
}

struct State {
    /// The open file; opened at the first write.
    file: Option<File>,
    /// The mark as on disk (0 when there is none).
    mark: u64,
    /// The last log index written to the database (synced or not).
    written: u64,
    /// Bumped by every truncation, so a sync that began before one does not
    /// raise the mark over entries the truncation removed.
    generation: u64,
}

/// What one sync covers: taken before the fsync begins.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SyncTicket {
    generation: u64,
    index: u64,
}

impl LogMark {
    /// The mark in `dir`, read from its file.
    pub(crate) fn open(dir: &Path) -> Result<LogMark, String> {
        let path = dir.join(MARK_FILE);
        let mark = read_mark(&path)?.unwrap_or(0);
        Ok(LogMark {
            path,
            state: Mutex::new(State {
                file: None,
                mark,
                written: mark,
                generation: 0,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The mark as on disk; 0 when there is none.
    pub(crate) fn get(&self) -> u64 {
        self.lock().mark
    }

    /// Entries up to `index` were written to the database.
    pub(crate) fn written(&self, index: u64) {
        let mut s = self.lock();
        s.written = s.written.max(index);
    }

    /// What the fsync about to begin covers.
    pub(crate) fn before_sync(&self) -> SyncTicket {
        let s = self.lock();
        SyncTicket {
            generation: s.generation,
            index: s.written,
        }
    }

    /// The fsync that began with `ticket` succeeded: raise the mark (no
    /// fsync of the mark itself, see the module's comment).
    pub(crate) fn after_sync(&self, ticket: SyncTicket) -> std::io::Result<()> {
        let mut s = self.lock();
        if ticket.generation != s.generation || ticket.index <= s.mark {
            return Ok(());
        }
        self.write(&mut s, ticket.index, false)
    }

    /// The log is about to be truncated from `index` on: lower the mark
    /// below it, durably, before anything is removed.
    pub(crate) fn before_truncate(&self, index: u64) -> std::io::Result<()> {
        let keep = index.saturating_sub(1);
        let mut s = self.lock();
        s.generation += 1;
        s.written = s.written.min(keep);
        if s.mark <= keep {
            return Ok(());
        }
        self.write(&mut s, keep, true)
    }

    fn write(&self, s: &mut State, index: u64, sync: bool) -> std::io::Result<()> {
        let file = match s.file.take() {
            Some(f) => f,
            None => {
                let file = File::options()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.path)?;
                // A new file's name must survive a crash for its content to.
                if let Some(dir) = self.path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                file
            }
        };
        let written = file
            .write_all_at(&mark_bytes(index), 0)
            .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
        s.file = Some(file);
        written?;
        s.mark = index;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_rises_after_syncs_and_falls_before_truncations() {
        let dir = tempfile::tempdir().unwrap();
        let mark = LogMark::open(dir.path()).unwrap();
        assert_eq!(read_mark(&dir.path().join(MARK_FILE)).unwrap(), None);
        mark.written(10);
        let ticket = mark.before_sync();
        mark.written(12);
        mark.after_sync(ticket).unwrap();
        assert_eq!(read_mark(&dir.path().join(MARK_FILE)).unwrap(), Some(10));

        // A sync that began before a truncation raises nothing.
        let ticket = mark.before_sync();
        mark.before_truncate(8).unwrap();
        assert_eq!(read_mark(&dir.path().join(MARK_FILE)).unwrap(), Some(7));
        mark.after_sync(ticket).unwrap();
        assert_eq!(mark.get(), 7);

        mark.written(9);
        let ticket = mark.before_sync();
        mark.after_sync(ticket).unwrap();
        assert_eq!(LogMark::open(dir.path()).unwrap().get(), 9);
    }

    #[test]
    fn a_mark_file_left_empty_or_zeroed_is_no_mark_and_garbage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MARK_FILE);
        std::fs::write(&path, b"").unwrap();
        assert_eq!(read_mark(&path).unwrap(), None);
        std::fs::write(&path, [0u8; 21]).unwrap();
        assert_eq!(read_mark(&path).unwrap(), None);
        std::fs::write(&path, b"12x").unwrap();
        let err = read_mark(&path).unwrap_err();
        assert!(err.contains(MARK_FILE) && err.contains("12x"), "{err}");
    }
}

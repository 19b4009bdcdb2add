//! Run logs on the node that ran the step: every line of an attempt's output
//! (secrets masked) in `DATA_DIR/run-logs/RUN_ID-ATTEMPT.log`, buffered, never
//! fsynced. Raft carries only a bounded tail of it (see `engine::step`);
//! `opsctl logs RUN` reads the whole log from here.
//!
//! Bounds: one file keeps at most [`MAX_FILE_BYTES`]; past that its lines are
//! counted, not kept, and the file ends with a line starting with
//! [`CUT_MARKER`]. The directory keeps at most [`MAX_TOTAL_BYTES`] in at most
//! [`MAX_FILES`] files: a new file first removes the oldest runs' files until
//! there is room for it. The node keeps the list of its files and their
//! lengths in memory (read from the directory once, at the first new file),
//! so making room costs nothing however many files there are.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use opsd_proto::v1::LogLines;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::warn;

use crate::api::follow::AnswerStream;
use crate::domain::resources::RunLog;

/// The most one attempt's file keeps.
pub const MAX_FILE_BYTES: u64 = 64 << 20;
/// The most all run log files of a node keep together.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;
/// The most run log files a node keeps.
pub const MAX_FILES: usize = 100_000;
/// How a file that reached [`MAX_FILE_BYTES`] ends: this, then what was not kept.
pub const CUT_MARKER: &str = "[opsd: the log on this node was cut here, at";
/// How a replicated line that stands for lines not replicated starts.
const SKIP_MARKER: &str = "[opsd: ";
const SKIP_MARKER_MIDDLE: &str = " not replicated; the whole log is on node ";
/// A served chunk holds at most this many lines...
const CHUNK_LINES: usize = 1000;
/// ...and about this many bytes.
const CHUNK_BYTES: usize = 1 << 20;

/// `bytes` as MiB with one decimal, e.g. `3.1 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The replicated line standing for `lines` lines of `bytes` bytes that the
/// step printed but that were not replicated.
pub fn skip_marker(lines: u64, bytes: u64, node_id: u64) -> String {
    format!(
        "{SKIP_MARKER}{lines} lines ({}){SKIP_MARKER_MIDDLE}{node_id}]",
        mib(bytes)
    )
}

/// Whether a replicated line is a [`skip_marker`].
pub fn is_skip_marker(line: &str) -> bool {
    line.starts_with(SKIP_MARKER) && line.contains(SKIP_MARKER_MIDDLE)
}

/// The run log files of one node. Cheap to clone: clones share the list.
#[derive(Debug, Clone)]
pub struct RunLogs {
    dir: PathBuf,
    files: Arc<Mutex<Option<Files>>>,
}

/// The files in the directory, by run and attempt (oldest first), with their
/// lengths as last known, and their total.
#[derive(Debug, Default)]
struct Files {
    len: BTreeMap<(u64, u32), u64>,
    total: u64,
}

impl Files {
    /// Reads the directory: every run log file and its length.
    fn read(dir: &Path) -> std::io::Result<Files> {
        let mut files = Files::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(order) = file_order(&name) {
                files.set(order, entry.metadata()?.len());
            }
        }
        Ok(files)
    }

    fn set(&mut self, order: (u64, u32), len: u64) {
        let old = self.len.insert(order, len).unwrap_or(0);
        self.total = self.total - old + len;
    }
}

impl RunLogs {
    /// The run logs under `data_dir`.
    pub fn new(data_dir: &Path) -> RunLogs {
        RunLogs {
            dir: data_dir.join("run-logs"),
            files: Arc::default(),
        }
    }

    /// The file of attempt `attempt` of run `index`.
    pub fn path(&self, index: u64, attempt: u32) -> PathBuf {
        self.dir.join(format!("r{index}-{attempt}.log"))
    }

    /// A new, empty file for an attempt, after making room for it. A file
    /// that cannot be made is logged and the lines go nowhere: the step runs
    /// all the same, and its replicated tail remains.
    pub fn create(&self, index: u64, attempt: u32) -> LogFile {
        let path = self.path(index, attempt);
        let made = std::fs::create_dir_all(&self.dir)
            .and_then(|_| self.make_room(MAX_TOTAL_BYTES.saturating_sub(MAX_FILE_BYTES), MAX_FILES - 1))
            .and_then(|_| File::create(&path))
            .inspect(|_| self.set_len((index, attempt), 0));
        let out = match made {
            Ok(file) => Some(BufWriter::with_capacity(64 << 10, file)),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "run log: cannot make the file; only the replicated tail is kept");
                None
            }
        };
        LogFile {
            out,
            path,
            logs: self.clone(),
            order: (index, attempt),
            written: 0,
            cut_lines: 0,
            cut_bytes: 0,
        }
    }

    /// Removes the oldest runs' files until the others take at most
    /// `keep_bytes` in at most `keep_files` files.
    fn make_room(&self, keep_bytes: u64, keep_files: usize) -> std::io::Result<()> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let files = match &mut *files {
            Some(files) => files,
            none => none.insert(Files::read(&self.dir)?),
        };
        while files.total > keep_bytes || files.len.len() > keep_files {
            let Some((order, len)) = files.len.pop_first() else {
                break;
            };
            files.total -= len;
            match std::fs::remove_file(self.path(order.0, order.1)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Records a file's length, once the list has been read.
    fn set_len(&self, order: (u64, u32), len: u64) {
        if let Some(files) = &mut *self.files.lock().unwrap_or_else(|p| p.into_inner()) {
            files.set(order, len);
        }
    }

    /// The whole log of an attempt, from its file, as the `Logs` RPC sends
    /// it; a file that was cut is followed by the replicated tail `log`, so
    /// the answer still ends with the step's last lines. `Err` if the file
    /// cannot be opened.
    pub fn serve(
        &self,
        index: u64,
        attempt: u32,
        run_id: String,
        log: RunLog,
    ) -> std::io::Result<AnswerStream<LogLines>> {
        let file = File::open(self.path(index, attempt))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || send_file(file, run_id, log, tx));
        Ok(Box::pin(ReceiverStream::new(rx)))
    }
}

/// The order of a run log file's name (`r12-1.log` → (12, 1)); `None` for
/// anything else.
fn file_order(name: &str) -> Option<(u64, u32)> {
    let (index, attempt) = name.strip_prefix('r')?.strip_suffix(".log")?.split_once('-')?;
    Some((index.parse().ok()?, attempt.parse().ok()?))
}

/// Sends the file's lines in chunks, then, if it was cut, the replicated tail.
fn send_file(file: File, run_id: String, log: RunLog, tx: mpsc::Sender<Result<LogLines, tonic::Status>>) {
    let mut reader = BufReader::new(file);
    let mut next_line = 0u64;
    let mut chunk: Vec<String> = Vec::new();
    let mut chunk_bytes = 0;
    let mut cut = false;
    let send = |lines: Vec<String>, first_line: u64| {
        tx.blocking_send(Ok(LogLines {
            run_id: run_id.clone(),
            first_line,
            lines,
            dropped: 0,
            note: String::new(),
        }))
        .is_ok()
    };
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                let _ = tx.blocking_send(Err(tonic::Status::internal(format!(
                    "cannot read the run's log file: {e}"
                ))));
                return;
            }
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        cut = line.starts_with(CUT_MARKER);
        chunk_bytes += line.len();
        chunk.push(line);
        if chunk.len() >= CHUNK_LINES || chunk_bytes >= CHUNK_BYTES {
            let n = chunk.len() as u64;
            if !send(std::mem::take(&mut chunk), next_line) {
                return;
            }
            next_line += n;
            chunk_bytes = 0;
        }
    }
    if cut {
        chunk.extend(log.lines);
    }
    // An empty log is one empty chunk, as from the replicated log.
    if !chunk.is_empty() || next_line == 0 {
        send(chunk, next_line);
    }
}

/// The file an attempt's lines are written to.
#[derive(Debug)]
pub struct LogFile {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    /// Whose list it is on, as what.
    logs: RunLogs,
    order: (u64, u32),
    /// The bytes written to it.
    written: u64,
    cut_lines: u64,
    cut_bytes: u64,
}

impl LogFile {
    /// Writes one line (already masked), or counts it once the file is full.
    pub fn line(&mut self, line: &str) {
        let bytes = line.len() as u64 + 1;
        if self.cut_lines > 0 || self.written + bytes > MAX_FILE_BYTES {
            self.cut_lines += 1;
            self.cut_bytes += bytes;
            return;
        }
        self.write(line);
    }

    /// Hands what is buffered to the file system (no fsync), so that the log
    /// read while the step runs is nearly current.
    pub fn flush(&mut self) {
        if let Some(out) = &mut self.out {
            if let Err(e) = out.flush() {
                self.failed(e);
            }
        }
    }

    /// Ends the file: if it was cut, a last line says where and what was not kept.
    pub fn finish(mut self) {
        if self.cut_lines > 0 {
            let marker = format!(
                "{CUT_MARKER} {}: the next {} lines ({}) were not kept; the end of the log, as replicated, follows]",
                mib(MAX_FILE_BYTES),
                self.cut_lines,
                mib(self.cut_bytes)
            );
            self.write(&marker);
        }
        self.flush();
        self.logs.set_len(self.order, self.written);
    }

    fn write(&mut self, line: &str) {
        if let Some(out) = &mut self.out {
            match out.write_all(line.as_bytes()).and_then(|_| out.write_all(b"\n")) {
                Ok(()) => self.written += line.len() as u64 + 1,
                Err(e) => self.failed(e),
            }
        }
    }

    fn failed(&mut self, e: std::io::Error) {
        warn!(path = %self.path.display(), error = %e, "run log: cannot write the file; only the replicated tail is kept");
        self.out = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_markers_are_recognised() {
        let marker = skip_marker(12345, 3_250_000, 2);
        assert_eq!(
            marker,
            "[opsd: 12345 lines (3.1 MiB) not replicated; the whole log is on node 2]"
        );
        assert!(is_skip_marker(&marker));
        assert!(!is_skip_marker("[opsd: something else]"));
    }

    #[test]
    fn a_full_file_is_cut_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let logs = RunLogs::new(dir.path());
        let mut file = logs.create(7, 1);
        let line = "x".repeat(1023);
        let fits = MAX_FILE_BYTES / 1024;
        for _ in 0..fits + 10 {
            file.line(&line);
        }
        file.finish();
        let text = std::fs::read_to_string(logs.path(7, 1)).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64, fits + 1);
        let last = lines.last().unwrap();
        assert!(last.starts_with(CUT_MARKER), "{last}");
        assert!(last.contains("the next 10 lines (0.0 MiB) were not kept"), "{last}");
    }

    #[test]
    fn the_oldest_runs_files_make_room() {
        let dir = tempfile::tempdir().unwrap();
        let logs = RunLogs::new(dir.path());
        for (index, attempt) in [(9, 1), (10, 2), (10, 1), (100, 1)] {
            let mut file = logs.create(index, attempt);
            file.line(&"y".repeat(99));
            file.finish();
        }
        std::fs::write(logs.dir.join("notes.txt"), "not a log").unwrap();
        logs.make_room(250, 10).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&logs.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["notes.txt", "r10-2.log", "r100-1.log"]);

        // A restarted node reads what is there; the count is bounded too.
        let logs = RunLogs::new(dir.path());
        logs.make_room(u64::MAX, 1).unwrap();
        assert!(!logs.path(10, 2).exists());
        assert!(logs.path(100, 1).exists());
        assert!(logs.dir.join("notes.txt").exists());
    }

    #[tokio::test]
    async fn a_cut_file_is_served_with_the_replicated_tail() {
        use futures::StreamExt;
        let dir = tempfile::tempdir().unwrap();
        let logs = RunLogs::new(dir.path());
        let mut file = logs.create(3, 1);
        for i in 0..2500 {
            file.line(&format!("line {i}"));
        }
        file.cut_lines = 1;
        file.finish();
        let tail = RunLog {
            dropped: 10,
            lines: vec!["end".into()],
        };
        let chunks: Vec<LogLines> = logs
            .serve(3, 1, "r3".into(), tail)
            .unwrap()
            .map(|c| c.unwrap())
            .collect()
            .await;
        let firsts: Vec<u64> = chunks.iter().map(|c| c.first_line).collect();
        assert_eq!(firsts, [0, 1000, 2000]);
        let lines: Vec<String> = chunks.into_iter().flat_map(|c| c.lines).collect();
        assert_eq!(lines.len(), 2502);
        assert_eq!(lines[2499], "line 2499");
        assert!(lines[2500].starts_with(CUT_MARKER));
        assert_eq!(lines[2501], "end");
        assert!(logs.serve(4, 1, "r4".into(), RunLog::default()).is_err());
    }
}

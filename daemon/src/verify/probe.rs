//! One attempt of a check against one machine: a TCP connect, a minimal
//! HTTP/1.1 GET (no client library: a request line, a Host header,
//! `Connection: close`, then the status line and a bounded body), or a
//! shell command in a process group of its own, killed on timeout.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{compile, one_line, Check, Probe};
use crate::ops::process::{describe_status, user_shell};
use crate::ops::MachineAddr;

/// The most bytes of a response (headers and body) read by an http check.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most bytes of an exec check's output kept for its detail.
const MAX_OUTPUT_BYTES: usize = 4096;

/// The longest detail line.
const MAX_DETAIL: usize = 200;

/// One attempt, within the check's timeout.
pub(super) async fn attempt(
    check: &Check,
    machine: &MachineAddr,
    env: &BTreeMap<String, String>,
) -> Result<String, String> {
    match &check.probe {
        Probe::Tcp => within(check.timeout, tcp(&machine.address)).await,
        Probe::Http { path, status, body } => {
            within(check.timeout, http(&machine.address, path, *status, body.as_deref())).await
        }
        Probe::Exec { command } => exec(command, machine, env, check.timeout).await,
    }
}

/// `work`, or a timeout error naming the limit.
async fn within<F: std::future::Future<Output = Result<String, String>>>(
    timeout: Duration,
    work: F,
) -> Result<String, String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {}", seconds(timeout))))
}

/// `1.5 s`, `2 s`, for messages.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s.fract() == 0.0 {
        format!("{s:.0} s")
    } else {
        format!("{s} s")
    }
}

/// The host and the port of `HOST:PORT` (`[::1]:80` too).
pub fn host_and_port(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Connects to `address`.
async fn connect(address: &str) -> Result<TcpStream, String> {
    TcpStream::connect(address)
        .await
        .map_err(|e| format!("cannot connect to {address}: {}", io_error(&e)))
}

/// An I/O error as a short phrase (`connection refused`).
fn io_error(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        ConnectionAborted => "connection aborted".into(),
        UnexpectedEof => "connection closed early".into(),
        _ => e.to_string(),
    }
}

async fn tcp(address: &str) -> Result<String, String> {
    connect(address).await.map(|_| "connected".to_string())
}

async fn http(address: &str, path: &str, want: u16, body_regex: Option<&str>) -> Result<String, String> {
    let regex = body_regex.map(compile).transpose()?;
    let mut stream = connect(address).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nUser-Agent: opsd-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending GET {path}: {}", io_error(&e)))?;
    let raw = read_bounded(&mut stream, MAX_BODY_BYTES)
        .await
        .map_err(|e| format!("reading the answer to GET {path}: {}", io_error(&e)))?;
    let response = parse_response(&raw).map_err(|e| format!("GET {path}: {e}"))?;
    let seen = format!("{} {}", response.status, response.reason).trim().to_string();
    if response.status != want {
        return Err(cut(&format!("GET {path}: status {seen}, expected {want}")));
    }
    if let Some(regex) = regex {
        let body = String::from_utf8_lossy(&response.body);
        if !regex.is_match(&body) {
            return Err(cut(&format!(
                "GET {path}: {seen}, but the body does not match /{}/ (body: {:?})",
                regex.as_str(),
                one_line(&body)
            )));
        }
        return Ok(cut(&format!("{seen}, body matches /{}/", regex.as_str())));
    }
    Ok(seen)
}

/// Reads until EOF or `limit` bytes.
async fn read_bounded<R: AsyncRead + Unpin>(reader: &mut R, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while out.len() < limit {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let take = n.min(limit - out.len());
        out.extend_from_slice(&buf[..take]);
    }
    Ok(out)
}

/// What an HTTP response said.
#[derive(Debug, PartialEq)]
struct Response {
    status: u16,
    reason: String,
    body: Vec<u8>,
}

/// Parses a status line, headers and body (chunked or with a length, or up
/// to the end), as far as they were read.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    if raw.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap_or(raw.len());
    let status_line = String::from_utf8_lossy(&raw[..line_end]).to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default().trim().to_string();
    let status = match (version.starts_with("HTTP/"), code.parse::<u16>()) {
        (true, Ok(s)) => s,
        _ => return Err(cut(&format!("not an HTTP answer: {:?}", one_line(&status_line)))),
    };
    let (headers, body) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(at) => (&raw[line_end..at], &raw[at + 4..]),
        None => (&raw[line_end..], &raw[raw.len()..]),
    };
    let headers = String::from_utf8_lossy(headers).to_ascii_lowercase();
    let header = |name: &str| {
        headers
            .split("\r\n")
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim() == name)
            .map(|(_, v)| v.trim().to_string())
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        dechunk(body)
    } else if let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body[..length.min(body.len())].to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, reason, body })
}

/// The data of a chunked body, as far as it was read.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        raw = &raw[end + 2..];
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        if take < size || raw.len() < take + 2 {
            break;
        }
        raw = &raw[take + 2..];
    }
    out
}

/// SIGKILLs a process group when dropped, unless disarmed: a probe that is
/// dropped (its check cancelled) leaves nothing running.
struct KillGroup(Option<i32>);

impl KillGroup {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

impl Drop for KillGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn exec(
    command: &str,
    machine: &MachineAddr,
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let (host, port) = host_and_port(&machine.address).unwrap_or_default();
    // A user's command: a clean environment (HOME is `/`: a check has no
    // directory of its own), as the exec user.
    let mut cmd = user_shell(command, Path::new("/"));
    cmd.envs(env)
        .env("OPSD_MACHINE_ADDRESS", &machine.address)
        .env("OPSD_MACHINE_HOST", host)
        .env("OPSD_MACHINE_PORT", port.to_string())
        .env("OPSD_MACHINE", machine.index.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("cannot run /bin/sh: {e}"))?;
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return Err("the check's shell exited before it could be watched".into());
    };
    let mut group = KillGroup(Some(pid));
    let out = tokio::spawn(read_tail(child.stdout.take()));
    let err = tokio::spawn(read_tail(child.stderr.take()));
    let waited = tokio::time::timeout(timeout, child.wait()).await;
    // The command is over, or out of time: nothing it started goes on.
    group.kill();
    let status = match waited {
        Ok(Ok(status)) => Some(status),
        Ok(Err(e)) => return Err(format!("waiting for the check's shell: {e}")),
        Err(_) => {
            let _ = child.wait().await;
            None
        }
    };
    let mut output = Vec::new();
    for task in [out, err] {
        if let Ok(Ok(bytes)) = tokio::time::timeout(Duration::from_secs(1), task).await {
            output.extend(bytes);
        }
    }
    let text = String::from_utf8_lossy(&output);
    let last = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let with_last = |head: String| {
        if last.is_empty() {
            head
        } else {
            cut(&format!("{head}: {last}"))
        }
    };
    match status {
        None => Err(with_last(format!("timed out after {} (killed)", seconds(timeout)))),
        Some(s) if s.success() => Ok(with_last("exit 0".into())),
        Some(s) => Err(with_last(describe_status(s))),
    }
}

/// The last [`MAX_OUTPUT_BYTES`] of a stream, read to its end.
async fn read_tail<R: AsyncRead + Unpin>(stream: Option<R>) -> Vec<u8> {
    let Some(mut stream) = stream else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > MAX_OUTPUT_BYTES {
            kept.drain(..kept.len() - MAX_OUTPUT_BYTES);
        }
    }
    kept
}

/// A detail cut to [`MAX_DETAIL`] characters.
fn cut(text: &str) -> String {
    if text.chars().count() <= MAX_DETAIL {
        return text.to_string();
    }
    let mut s: String = text.chars().take(MAX_DETAIL).collect();
    s.push('…');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_parsed_with_lengths_and_chunks() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello world").unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (200, "OK", &b"hello"[..])
        );
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n5;x=1\r\npedia\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"wikipedia"[..]));
        let r = parse_response(b"HTTP/1.0 500 Oops\r\n\r\nbad").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (500, &b"bad"[..]));
        assert_eq!(
            parse_response(b"SSH-2.0-OpenSSH\r\n").unwrap_err(),
            "not an HTTP answer: \"SSH-2.0-OpenSSH\""
        );
        assert!(parse_response(b"").unwrap_err().contains("without an answer"));
        // A truncated chunk keeps what came.
        assert_eq!(dechunk(b"a\r\nabc"), b"abc");
        assert_eq!(dechunk(b"zz\r\nabc"), b"");
    }

    #[test]
    fn addresses_split_into_host_and_port() {
        assert_eq!(host_and_port("127.0.0.1:80"), Some(("127.0.0.1".into(), 80)));
        assert_eq!(host_and_port("[::1]:8080"), Some(("::1".into(), 8080)));
        assert_eq!(host_and_port("node-a:1"), Some(("node-a".into(), 1)));
        assert_eq!(host_and_port("nope"), None);
        assert_eq!(host_and_port(":80"), None);
        assert_eq!(host_and_port("h:99999"), None);
    }
}

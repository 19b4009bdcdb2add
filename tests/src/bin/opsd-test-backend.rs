//! `opsd-test-backend`: the machine program of the service tests and the
//! load-balancer benchmark. A small HTTP/1.1 server on `127.0.0.1:$PORT` and
//! on `$PORT` of every host in `--hosts H1,H2,...` (or `$BACKEND_HOSTS`), or
//! on `--listen HOST:PORT` alone, that answers every request with one line,
//! `BODY mINDEX` (for example `web-v1 m0`), so that a client can tell which
//! cluster and which machine answered it through a load balancer.
//!
//! - BODY is `--body TEXT`, else `$BACKEND_BODY`, else `$OPSD_CLUSTER` (the
//!   cluster a local machine belongs to), else `backend`.
//! - INDEX is `$OPSD_MACHINE` (the machine's index), else 0.
//! - `GET /health` answers `ok`; every other path answers the line above.
//! - The extra hosts are there because opsd records a machine's address with
//!   its node's advertise host (`127.x.y.z` in the tests), while a machine
//!   is not told that host: the tests list every node's host. A host that
//!   cannot be bound is reported and skipped; if none can, it exits.
//! - Connections are kept alive (HTTP/1.1) unless the request says
//!   `Connection: close` or is HTTP/1.0 without `Connection: keep-alive`.
//!
//! A request is its head (up to 16 KiB) and a `Content-Length` body, which is
//! read and ignored; anything the server cannot parse gets a 400 and the
//! connection is closed. It never exits by itself: it runs until killed.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest request head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// What every answer is made of.
struct Identity {
    /// The first word of the answer.
    body: String,
    /// The machine's index.
    machine: String,
}

/// The value after `--NAME` in the arguments, if given.
fn arg(args: &[String], name: &str) -> Option<String> {
    let flag = format!("--{name}");
    let prefix = format!("--{name}=");
    args.iter().enumerate().find_map(|(i, a)| {
        if *a == flag {
            args.get(i + 1).cloned()
        } else {
            a.strip_prefix(&prefix).map(str::to_string)
        }
    })
}

/// An environment variable, if set and not empty.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!(
            "opsd-test-backend [--listen HOST:PORT | --hosts H1,H2,...] [--body TEXT]: answers every HTTP \
             request with `BODY mINDEX` (BODY: --body, $BACKEND_BODY, $OPSD_CLUSTER or `backend`; INDEX: \
             $OPSD_MACHINE); GET /health answers `ok`. Without --listen, listens on $PORT of 127.0.0.1 and of \
             every host of --hosts (or $BACKEND_HOSTS)."
        );
        return;
    }
    let listens: Vec<String> = match arg(&args, "listen") {
        Some(a) => vec![a],
        None => match env("PORT") {
            Some(port) => {
                let hosts = arg(&args, "hosts").or_else(|| env("BACKEND_HOSTS")).unwrap_or_default();
                let mut all = vec!["127.0.0.1".to_string()];
                for h in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
                    if !all.iter().any(|a| a == h) {
                        all.push(h.to_string());
                    }
                }
                all.into_iter().map(|h| format!("{h}:{port}")).collect()
            }
            None => {
                eprintln!("opsd-test-backend: give --listen HOST:PORT or set PORT");
                std::process::exit(2);
            }
        },
    };
    let mut addrs = Vec::new();
    for listen in &listens {
        match listen.parse::<SocketAddr>() {
            Ok(a) => addrs.push(a),
            Err(e) => {
                eprintln!("opsd-test-backend: {listen:?} is not HOST:PORT (from --listen, --hosts or PORT): {e}");
                std::process::exit(2);
            }
        }
    }
    let identity = Identity {
        body: arg(&args, "body")
            .or_else(|| env("BACKEND_BODY"))
            .or_else(|| env("OPSD_CLUSTER"))
            .unwrap_or_else(|| "backend".into()),
        machine: env("OPSD_MACHINE").unwrap_or_else(|| "0".into()),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("opsd-test-backend: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(addrs, identity)) {
        eprintln!("opsd-test-backend: {e}");
        std::process::exit(1);
    }
}

/// Binds every address it can and accepts connections on each for ever,
/// every connection served on its own task. `Err` if none could be bound.
async fn serve(addrs: Vec<SocketAddr>, identity: Identity) -> std::io::Result<()> {
    let answer: std::sync::Arc<str> = format!("{} m{}\n", identity.body, identity.machine).into();
    let mut accepting = Vec::new();
    let mut last_error = None;
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => {
                eprintln!(
                    "opsd-test-backend: {} m{} listening on {addr}",
                    identity.body, identity.machine
                );
                accepting.push(tokio::spawn(accept(listener, answer.clone())));
            }
            Err(e) => {
                eprintln!("opsd-test-backend: cannot listen on {addr}: {e}");
                last_error = Some(std::io::Error::new(e.kind(), format!("{addr}: {e}")));
            }
        }
    }
    if accepting.is_empty() {
        return Err(last_error.unwrap_or_else(|| std::io::Error::other("no address to listen on")));
    }
    for a in accepting {
        let _ = a.await;
    }
    Ok(())
}

/// Accepts connections on `listener` for ever.
async fn accept(listener: TcpListener, answer: std::sync::Arc<str>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            // Out of file descriptors and the like: wait and go on.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let answer = answer.clone();
        tokio::spawn(async move {
            let _ = connection(stream, &answer).await;
        });
    }
}

/// One parsed request head.
struct Head {
    path: String,
    keep_alive: bool,
    content_length: usize,
}

/// Parses a request head (without its final blank line); `None` if it is not HTTP/1.x.
fn parse_head(text: &str) -> Option<Head> {
    let mut lines = text.split("\r\n");
    let mut request = lines.next()?.split(' ');
    let (_method, path, version) = (request.next()?, request.next()?, request.next()?);
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return None,
    };
    let mut content_length = 0;
    for line in lines {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            if value.eq_ignore_ascii_case("close") {
                keep_alive = false;
            } else if value.eq_ignore_ascii_case("keep-alive") {
                keep_alive = true;
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            content_length = value.parse().ok()?;
        }
    }
    Some(Head {
        path: path.to_string(),
        keep_alive,
        content_length,
    })
}

/// Serves requests on one connection until the client closes it or asks to.
async fn connection(mut stream: TcpStream, answer: &str) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        // Read until a whole head is buffered.
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if buf.len() > MAX_HEAD {
                return respond(&mut stream, "400 Bad Request", "request head too large\n", false).await;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = match std::str::from_utf8(&buf[..end]).ok().and_then(parse_head) {
            Some(h) => h,
            None => return respond(&mut stream, "400 Bad Request", "not an HTTP/1.x request\n", false).await,
        };
        // Skip the body, which may be partly buffered already.
        let mut rest = buf.split_off(end + 4);
        while rest.len() < head.content_length {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        buf = rest.split_off(head.content_length);
        let body = if head.path == "/health" { "ok\n" } else { answer };
        respond(&mut stream, "200 OK", body, head.keep_alive).await?;
        if !head.keep_alive {
            return Ok(());
        }
    }
}

/// Writes one response; closes the connection after it unless `keep_alive`.
async fn respond(stream: &mut TcpStream, status: &str, body: &str, keep_alive: bool) -> std::io::Result<()> {
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    );
    stream.write_all(response.as_bytes()).await?;
    if !keep_alive {
        stream.shutdown().await?;
    }
    Ok(())
}

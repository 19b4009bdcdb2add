//! The EC2 client as the provider's steps use it: aws-config's standard
//! chain (environment, profile, instance role) for credentials, region and
//! endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`), an HTTPS client on
//! rustls with ring, timeouts so that an endpoint that never answers fails a
//! step instead of holding it, and the chain's retry mode, by default the
//! standard one (throttling is retried with backoff). Every call is raced
//! against the step's cancellation, and every error reads
//! `Operation: Code: message`, as AWS says it.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::Client;
use aws_smithy_http_client::tls;
use tokio_util::sync::CancellationToken;

use crate::ops::StepError;

/// The environment variable giving the longest one EC2 request may wait for
/// its answer (a humantime duration, `20s`); the operation, with retries,
/// gets four times as long.
pub const ATTEMPT_TIMEOUT_VAR: &str = "OPSD_EC2_ATTEMPT_TIMEOUT";

/// [`ATTEMPT_TIMEOUT_VAR`]'s default.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest a TCP (and TLS) connection to the endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The EC2 client of this node and what it was configured with.
#[derive(Clone, Debug)]
pub struct Ec2 {
    /// The SDK client.
    pub client: Client,
    /// The region it talks to (recorded in outputs).
    pub region: String,
    /// The attempt timeout in force, for messages.
    pub attempt_timeout: Duration,
}

/// The attempt timeout: [`ATTEMPT_TIMEOUT_VAR`] if set, else the default.
fn attempt_timeout() -> Result<Duration, String> {
    match std::env::var(ATTEMPT_TIMEOUT_VAR) {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("{ATTEMPT_TIMEOUT_VAR}={v:?}: not a duration such as 20s")),
        _ => Ok(DEFAULT_ATTEMPT_TIMEOUT),
    }
}

/// The SDK's configuration loader with opsd's HTTP client (rustls on
/// ring) and timeouts, before anything is read from the environment. The
/// retry mode is the chain's (`AWS_RETRY_MODE`, `AWS_MAX_ATTEMPTS`, the
/// profile), by default the standard mode: 3 attempts, throttling and
/// transient errors retried with jittered exponential backoff.
fn loader(attempt_timeout: Duration) -> aws_config::ConfigLoader {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt_timeout)
        .operation_timeout(attempt_timeout * 4)
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts)
}

/// The client of a loaded configuration; fails, saying how to set it, when
/// there is no region.
fn client_of(config: &aws_config::SdkConfig, attempt_timeout: Duration) -> Result<Ec2, String> {
    let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
        "no AWS region: set AWS_REGION in opsd's environment (or `region` in its AWS profile)".to_string()
    })?;
    Ok(Ec2 {
        client: Client::new(config),
        region,
        attempt_timeout,
    })
}

/// Loads the SDK configuration from the standard chain (environment,
/// profile, instance role; `AWS_ENDPOINT_URL`/`AWS_ENDPOINT_URL_EC2`).
pub async fn load() -> Result<Ec2, String> {
    let attempt_timeout = attempt_timeout()?;
    let config = loader(attempt_timeout).load().await;
    client_of(&config, attempt_timeout)
}

/// `Operation: Code: message` of an SDK error: AWS's own code and message
/// for an error AWS answered, else what kept the call from an answer (a
/// timeout says so, with the timeout).
pub fn describe<E, R>(operation: &str, timeout: Duration, e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: Debug,
{
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{operation}: {}: {}",
                err.code().unwrap_or("UnknownError"),
                err.message().unwrap_or("(no message)")
            )
        }
        SdkError::TimeoutError(_) => format!(
            "{operation}: the EC2 endpoint did not answer in time (each attempt may take {}, \
             set by {ATTEMPT_TIMEOUT_VAR}): {}",
            humantime::format_duration(timeout),
            DisplayErrorContext(e)
        ),
        _ => format!("{operation}: {}", DisplayErrorContext(e)),
    }
}

/// AWS's error code of an SDK error, if AWS answered one.
pub fn code<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

impl Ec2 {
    /// Runs one SDK call, raced against `cancel`; its error described as
    /// [`describe`] does.
    pub async fn call<T, E, R>(
        &self,
        operation: &str,
        cancel: &CancellationToken,
        call: impl Future<Output = Result<T, SdkError<E, R>>>,
    ) -> Result<T, StepError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: Debug,
    {
        tokio::select! {
            r = call => r.map_err(|e| StepError::Failed(describe(operation, self.attempt_timeout, &e))),
            _ = cancel.cancelled() => Err(StepError::Cancelled),
        }
    }
}

/// Sleeps `d`, or returns `Cancelled` at once if `cancel` fires.
pub async fn pause(d: Duration, cancel: &CancellationToken) -> Result<(), StepError> {
    tokio::select! {
        _ = tokio::time::sleep(d) => Ok(()),
        _ = cancel.cancelled() => Err(StepError::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use aws_config::Region;
    use aws_sdk_ec2::config::Credentials;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    const THROTTLED: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error>\
        <Code>RequestLimitExceeded</Code><Message>Request limit exceeded.</Message></Error></Errors>\
        <RequestID>r1</RequestID></Response>";
    const NO_INSTANCES: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
        <DescribeInstancesResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
        <requestId>r2</requestId><reservationSet/></DescribeInstancesResponse>";

    /// A loopback EC2 endpoint answering the first `throttle` requests with
    /// `RequestLimitExceeded` (HTTP 503, as EC2 does) and the rest with an
    /// empty `DescribeInstances`; counts the requests.
    async fn endpoint(throttle: usize) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 8192];
                    // The whole request: headers, then Content-Length bytes of body.
                    loop {
                        let Ok(n) = conn.read(&mut buf).await else { return };
                        if n == 0 {
                            return;
                        }
                        req.extend_from_slice(&buf[..n]);
                        let text = String::from_utf8_lossy(&req).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len = text[..end]
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                                })
                                .unwrap_or(0);
                            if req.len() >= end + 4 + len {
                                break;
                            }
                        }
                    }
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = if n < throttle {
                        ("503 Service Unavailable", THROTTLED)
                    } else {
                        ("200 OK", NO_INSTANCES)
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        (format!("http://{addr}"), count)
    }

    async fn ec2_at(url: &str) -> Ec2 {
        let config = loader(Duration::from_secs(5))
            .retry_config(aws_config::retry::RetryConfig::standard())
            .endpoint_url(url)
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
            .load()
            .await;
        client_of(&config, Duration::from_secs(5)).unwrap()
    }

    #[tokio::test]
    async fn a_throttled_call_is_retried_with_backoff_not_failed_at_once() {
        let (url, count) = endpoint(2).await;
        let ec2 = ec2_at(&url).await;
        let cancel = CancellationToken::new();
        let out = ec2
            .call("DescribeInstances", &cancel, ec2.client.describe_instances().send())
            .await
            .expect("the third attempt succeeds");
        assert!(out.reservations().is_empty());
        assert_eq!(
            count.load(Ordering::SeqCst),
            3,
            "two throttled attempts, then the answer"
        );
    }

    #[tokio::test]
    async fn throttling_that_lasts_fails_with_aws_code_and_message() {
        let (url, count) = endpoint(usize::MAX).await;
        let ec2 = ec2_at(&url).await;
        let e = ec2
            .call(
                "DescribeInstances",
                &CancellationToken::new(),
                ec2.client.describe_instances().send(),
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            StepError::Failed("DescribeInstances: RequestLimitExceeded: Request limit exceeded.".into())
        );
        assert_eq!(count.load(Ordering::SeqCst), 3, "the standard mode's three attempts");
    }

    #[tokio::test]
    async fn a_cancelled_call_returns_at_once() {
        let (url, _) = endpoint(usize::MAX).await;
        let ec2 = ec2_at(&url).await;
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = ec2
            .call("DescribeInstances", &cancel, ec2.client.describe_instances().send())
            .await
            .unwrap_err();
        assert_eq!(e, StepError::Cancelled);
    }

    #[test]
    fn a_config_without_a_region_says_how_to_set_one() {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .build();
        let e = client_of(&config, Duration::from_secs(1)).unwrap_err();
        assert!(e.starts_with("no AWS region: set AWS_REGION"), "{e}");
    }
}

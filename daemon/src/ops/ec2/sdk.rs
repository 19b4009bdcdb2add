//! The EC2 client as the provider's steps use it: aws-config's standard
//! chain (environment, profile, instance role) for credentials, region and
//! endpoint (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`), an HTTPS client on
//! rustls with ring, timeouts so that an endpoint that never answers fails a
//! step instead of holding it, and the standard retry mode (throttling is
//! retried with backoff). Every call is raced against the step's
//! cancellation, and every error reads `Operation: Code: message`, as AWS
//! says it.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use aws_config::retry::RetryConfig;
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

/// Loads the SDK configuration from the standard chain. Fails, saying how to
/// set it, when there is no region.
pub async fn load() -> Result<Ec2, String> {
    let attempt_timeout = attempt_timeout()?;
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt_timeout)
        .operation_timeout(attempt_timeout * 4)
        .build();
    let config = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard())
        .load()
        .await;
    let region = config.region().map(|r| r.to_string()).ok_or_else(|| {
        "no AWS region: set AWS_REGION in opsd's environment (or `region` in its AWS profile)".to_string()
    })?;
    Ok(Ec2 {
        client: Client::new(&config),
        region,
        attempt_timeout,
    })
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

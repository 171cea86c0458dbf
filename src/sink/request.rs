//! What the request-based destinations share: a blocking HTTP/1.1 client over the daemon's tokio
//! runtime (rustls with the system's roots for `https://`), and Firehose's retry clock.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

use super::SinkError;

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("spillway/", env!("CARGO_PKG_VERSION"));

/// The start of a response body, as text, for error messages (Firehose keeps 8,192 characters).
pub fn snippet(body: &[u8]) -> String {
    // Invalid bytes become 3-byte replacement characters, so the text is bounded again.
    bounded(String::from_utf8_lossy(&body[..body.len().min(MAX_MESSAGE)]).into_owned())
}

/// The longest error message taken from a destination's answer, in bytes (Firehose's limit on an
/// HTTP endpoint's `errorMessage`): a message is repeated in every record's error document.
pub const MAX_MESSAGE: usize = 8192;

/// `message` cut to at most [`MAX_MESSAGE`] bytes, at a character boundary.
pub fn bounded(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// An HTTP client whose calls block the (pipeline) thread that makes them.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Connector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

/// A response, its body read up to the caller's limit.
pub struct Response {
    pub status: http::StatusCode,
    /// The body, when it was within the limit.
    pub body: Bytes,
    /// The body was longer than the limit (and `body` is empty).
    pub too_large: bool,
}

/// Why no response came.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("could not connect: {0}")]
    Connect(String),
    #[error("the connection failed before the response was complete: {0}")]
    Reset(String),
}

impl HttpClient {
    /// A client that waits at most `timeout` for each response (headers and body), and trusts
    /// the system's certificate authorities plus those in the PEM file `ca_file`.
    pub fn new(
        runtime: tokio::runtime::Handle,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> Result<HttpClient, SinkError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(path) = ca_file {
            let setup =
                |why: String| SinkError::Setup(format!("ca_file {}: {why}", path.display()));
            let pem = std::fs::read(path).map_err(|e| setup(e.to_string()))?;
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| setup(format!("not a PEM certificate: {e:?}")))?;
                roots
                    .add(cert)
                    .map_err(|e| setup(format!("not a CA certificate: {e}")))?;
                n += 1;
            }
            if n == 0 {
                return Err(setup("holds no certificate".into()));
            }
        } else if added == 0 {
            // Only http:// works then; an https:// request fails to connect with an error that
            // says why, instead of the daemon refusing to start.
            tracing::warn!(
                "no system CA certificates: https:// destinations will fail without ca_file"
            );
        }
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let _guard = runtime.enter();
        let client = Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(50))
            .build(connector);
        Ok(HttpClient {
            client,
            runtime,
            timeout,
        })
    }

    /// Sends `request` and reads at most `limit` bytes of the response body.
    pub fn send(
        &self,
        request: http::Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Response, RequestError> {
        let timeout = self.timeout;
        self.runtime.block_on(async {
            let exchange = async {
                let response = self.client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        RequestError::Connect(error_chain(&e))
                    } else {
                        RequestError::Reset(error_chain(&e))
                    }
                })?;
                let status = response.status();
                match Limited::new(response.into_body(), limit).collect().await {
                    Ok(body) => Ok(Response {
                        status,
                        body: body.to_bytes(),
                        too_large: false,
                    }),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => Ok(Response {
                        status,
                        body: Bytes::new(),
                        too_large: true,
                    }),
                    Err(e) => Err(RequestError::Reset(e.to_string())),
                }
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .unwrap_or(Err(RequestError::Timeout(timeout)))
        })
    }
}

/// An error and its sources, `: `-separated (hyper's own message is only the outermost layer).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Firehose's retry schedule for a batch: waits of 1 s doubling, each ±15 % and at most 120 s, as
/// long as the waits add up to no more than the retry duration. Only the waits count, not the
/// time spent waiting for responses, as in Firehose; a wait is never cut short to fit.
pub struct RetryClock {
    budget: Duration,
    spent: Duration,
    next: Duration,
    seed: u64,
    /// Attempts made so far.
    pub attempts: u32,
}

const FIRST_WAIT: Duration = Duration::from_secs(1);
const LONGEST_WAIT: Duration = Duration::from_secs(120);

impl RetryClock {
    /// A clock of `budget` worth of waits; `seed` varies the jitter.
    pub fn new(budget: Duration, seed: u64) -> RetryClock {
        RetryClock {
            budget,
            spent: Duration::ZERO,
            next: FIRST_WAIT,
            seed: seed | 1,
            attempts: 0,
        }
    }

    /// Counts an attempt about to be made.
    pub fn attempt(&mut self) {
        self.attempts += 1;
    }

    /// The wait before the next attempt, or `None` when the retry duration is used up.
    pub fn next_wait(&mut self) -> Option<Duration> {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        // ±15 %: a factor in [0.85, 1.15].
        let permille = 850 + self.seed % 301;
        let wait = (self.next * permille as u32 / 1000).min(LONGEST_WAIT);
        if self.spent + wait > self.budget {
            return None;
        }
        self.next = (self.next * 2).min(LONGEST_WAIT);
        self.spent += wait;
        Some(wait)
    }
}

/// A seed for jitter that differs between batches and runs.
pub fn jitter_seed(salt: &str) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    salt.bytes().fold(nanos ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_clock_doubles_with_jitter_and_stops_at_the_budget() {
        let mut clock = RetryClock::new(Duration::from_secs(300), 7);
        let mut waits = Vec::new();
        while let Some(w) = clock.next_wait() {
            waits.push(w);
        }
        let nominal = [1u64, 2, 4, 8, 16, 32, 64, 120];
        for (w, n) in waits.iter().zip(nominal) {
            let n = Duration::from_secs(n);
            assert!(*w >= n * 85 / 100 && *w <= n * 115 / 100, "{w:?} vs {n:?}");
            assert!(*w <= LONGEST_WAIT, "{w:?}");
        }
        let total: Duration = waits.iter().sum();
        // 1 + 2 + ... + 64 + 120 = 247 s nominal; one more 120 s wait would pass 300 s.
        assert_eq!(waits.len(), 8, "{waits:?}");
        assert!(total <= Duration::from_secs(300), "{waits:?}");
    }

    #[test]
    fn messages_are_bounded_at_a_character_boundary() {
        assert_eq!(bounded("short".into()), "short");
        assert_eq!(bounded("x".repeat(MAX_MESSAGE)).len(), MAX_MESSAGE);
        assert_eq!(bounded("x".repeat(MAX_MESSAGE + 1)).len(), MAX_MESSAGE);
        // A 3-byte character across the limit is left out whole.
        let cut = bounded(format!("{}€", "x".repeat(MAX_MESSAGE - 1)));
        assert_eq!(cut.len(), MAX_MESSAGE - 1);
        // A body of invalid bytes, shown as replacement characters, stays within the limit too.
        assert!(snippet(&vec![0xff; MAX_MESSAGE * 2]).len() <= MAX_MESSAGE);
    }

    #[test]
    fn a_zero_retry_duration_allows_one_attempt() {
        let mut clock = RetryClock::new(Duration::ZERO, 1);
        assert_eq!(clock.next_wait(), None);
    }
}

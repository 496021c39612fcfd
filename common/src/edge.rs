//! Checks at the HTTP edge, before a request reaches the API: body size,
//! bearer-token authentication, per-client rate limiting, and the request
//! time limit. Configured by [`EdgeConfig`]; each check is off unless set.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};

use crate::config::EdgeConfig;
use crate::http::{self, Body, PeerAddr};

/// Per-client token buckets.
pub struct RateLimiter {
    per_sec: f64,
    burst: f64,
    shards: Vec<Mutex<HashMap<IpAddr, Bucket>>>,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

const SHARDS: usize = 16;
/// Buckets kept per shard before idle ones are dropped.
const MAX_BUCKETS_PER_SHARD: usize = 16_384;

impl RateLimiter {
    pub fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    /// Takes one token for `client` at `now`; on refusal, the wait until the next token.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let shard = &self.shards[shard_of(client)];
        let mut buckets = shard.lock().expect("rate limiter lock is never poisoned");
        if buckets.len() >= MAX_BUCKETS_PER_SHARD {
            // Memory stays bounded: forget clients whose bucket has refilled.
            let full_after = Duration::from_secs_f64(self.burst / self.per_sec);
            buckets.retain(|_, b| now.duration_since(b.at) < full_after);
        }
        let b = buckets.entry(client).or_insert(Bucket { tokens: self.burst, at: now });
        let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }
}

fn shard_of(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u64::from(u32::from(v4)),
        IpAddr::V6(v6) => (u128::from(v6) as u64) ^ ((u128::from(v6) >> 64) as u64),
    };
    (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % SHARDS
}

/// The edge checks of one service.
#[derive(Clone)]
pub struct Edge {
    token: Option<Arc<str>>,
    limiter: Option<Arc<RateLimiter>>,
    request_timeout: Duration,
    max_body_bytes: u64,
}

impl Edge {
    pub fn new(cfg: &EdgeConfig) -> Self {
        Edge {
            token: cfg.api_token.as_deref().filter(|t| !t.is_empty()).map(Arc::from),
            limiter: (cfg.rate_limit_per_sec > 0)
                .then(|| Arc::new(RateLimiter::new(cfg.rate_limit_per_sec, cfg.rate_limit_burst.get()))),
            request_timeout: cfg.request_timeout,
            max_body_bytes: cfg.max_body_bytes,
        }
    }

    /// The answer to a request that fails a check, or `None` to let it through;
    /// `write` marks requests that need the token.
    pub fn refusal<B>(&self, req: &Request<B>, write: bool) -> Option<Response<Body>> {
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) {
            return Some(http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {} bytes; this API takes its input in the query string",
                    self.max_body_bytes
                ),
            ));
        }
        // Rate limiting first: it also bounds guesses at the token.
        if let (Some(limiter), Some(PeerAddr(peer))) = (&self.limiter, req.extensions().get::<PeerAddr>()) {
            if let Err(wait) = limiter.check(peer.ip(), Instant::now()) {
                let mut r =
                    http::error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded for this client; slow down");
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait.as_secs().max(1)));
                return Some(r);
            }
        }
        if let (true, Some(token)) = (write, &self.token) {
            let presented =
                req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
                let mut r = http::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Some(r);
            }
        }
        None
    }

    /// Runs `answer` within the request time limit; 503 with `reason` when it takes longer.
    pub async fn within_time_limit(
        &self,
        answer: impl Future<Output = Response<Body>>,
        reason: &'static str,
    ) -> Response<Body> {
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(r) => r,
            Err(_) => http::unavailable(reason, 1),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeConfig,
    }

    fn edge(args: &[&str]) -> Edge {
        Edge::new(&Cli::parse_from(std::iter::once("t").chain(args.iter().copied())).edge)
    }

    fn req(auth: Option<&str>, len: Option<u64>, ip: [u8; 4]) -> Request<()> {
        let mut b = Request::post("/analytics");
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        if let Some(l) = len {
            b = b.header(CONTENT_LENGTH, l);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut().insert(PeerAddr((ip, 1000).into()));
        r
    }

    #[test]
    fn everything_is_admitted_by_default() {
        let e = edge(&[]);
        for _ in 0..1000 {
            assert!(e.refusal(&req(None, None, [1, 2, 3, 4]), true).is_none());
        }
    }

    #[test]
    fn writes_need_the_bearer_token_when_one_is_set() {
        let e = edge(&["--api-token", "s3cret"]);
        let status = |r: Option<Response<Body>>| r.map(|r| r.status());
        assert_eq!(status(e.refusal(&req(None, None, [1, 1, 1, 1]), true)), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(e.refusal(&req(Some("Bearer nope"), None, [1, 1, 1, 1]), true)),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(status(e.refusal(&req(Some("s3cret"), None, [1, 1, 1, 1]), true)), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(status(e.refusal(&req(Some("Bearer s3cret"), None, [1, 1, 1, 1]), true)), None);
        assert_eq!(status(e.refusal(&req(None, None, [1, 1, 1, 1]), false)), None, "reads need no token");
    }

    #[test]
    fn each_client_gets_its_own_bucket() {
        let e = edge(&["--rate-limit-per-sec", "1", "--rate-limit-burst", "3"]);
        for _ in 0..3 {
            assert!(e.refusal(&req(None, None, [9, 9, 9, 9]), true).is_none());
        }
        let refused = e.refusal(&req(None, None, [9, 9, 9, 9]), true).expect("refused");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()[RETRY_AFTER], "1");
        assert!(e.refusal(&req(None, None, [8, 8, 8, 8]), true).is_none(), "another client is not affected");
    }

    #[test]
    fn buckets_refill_at_the_configured_rate() {
        let limiter = RateLimiter::new(10, 2);
        let ip: IpAddr = [1, 2, 3, 4].into();
        let t0 = Instant::now();
        assert!(limiter.check(ip, t0).is_ok());
        assert!(limiter.check(ip, t0).is_ok());
        let wait = limiter.check(ip, t0).expect_err("refused");
        assert!(wait <= Duration::from_millis(100));
        assert!(limiter.check(ip, t0 + Duration::from_millis(100)).is_ok());
    }

    #[test]
    fn declared_bodies_over_the_limit_get_413() {
        let e = edge(&["--max-body-bytes", "10"]);
        assert_eq!(
            e.refusal(&req(None, Some(11), [1, 1, 1, 1]), true).expect("refused").status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
        assert!(e.refusal(&req(None, Some(10), [1, 1, 1, 1]), true).is_none());
    }
}

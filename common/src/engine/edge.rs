//! Checks at the HTTP edge, before a request reaches the API: body size,
//! bearer-token authentication (one token for writes, another for reads),
//! per-client rate limiting, and the request time limit. Configured by
//! [`EdgeConfig`]; each check is off unless set. [`Cors`] answers browsers'
//! cross-origin checks for the origins of a [`CorsConfig`].

use std::future::Future;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS, ACCESS_CONTROL_ALLOW_ORIGIN,
    ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE, ACCESS_CONTROL_REQUEST_METHOD, ALLOW, AUTHORIZATION,
    CONTENT_LENGTH, ORIGIN, RETRY_AFTER, VARY, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use subtle::ConstantTimeEq;

use crate::engine::config::{CorsConfig, EdgeConfig, ReadAuthConfig, WriteAuthConfig};
use crate::engine::http::{self, Body, PeerAddr};

/// Per-client rate limits: a GCRA (token bucket equivalent) per client IP
/// address, refilling `per_sec` a second up to `burst`. The per-client state
/// lives in governor's concurrent map (a `DashMap`), not behind a lock of ours.
pub struct RateLimiter<C: Clock = DefaultClock> {
    limiter: governor::RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    /// Clients kept before idle ones (whose bucket has refilled) are dropped.
    max_clients: usize,
    /// Checks since the size of the client table was last looked at.
    checks: AtomicU32,
}

/// Clients remembered before idle ones are dropped (a few dozen bytes each).
const MAX_CLIENTS: usize = 262_144;
/// Every this many checks (a power of two) the size of the client table is looked at (it locks every shard).
const SIZE_CHECK_EVERY: u32 = 1024;

impl RateLimiter {
    /// `per_sec` requests a second per client, `burst` of them at once.
    pub fn new(per_sec: NonZeroU32, burst: NonZeroU32) -> Self {
        RateLimiter::with_clock(per_sec, burst, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// A limiter reading time from `clock` (tests use a fake one).
    pub fn with_clock(per_sec: NonZeroU32, burst: NonZeroU32, clock: C) -> Self {
        let quota = Quota::per_second(per_sec).allow_burst(burst);
        RateLimiter {
            limiter: governor::RateLimiter::dashmap_with_clock(quota, clock),
            max_clients: MAX_CLIENTS,
            checks: AtomicU32::new(0),
        }
    }

    /// Takes one token for `client`; on refusal, the wait until the next token.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let look_at_size = self.checks.fetch_add(1, Ordering::Relaxed) & (SIZE_CHECK_EVERY - 1) == 0;
        if look_at_size && self.limiter.len() >= self.max_clients {
            // Memory stays bounded: forget clients whose bucket has refilled.
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
        self.limiter.check_key(&client).map_err(|not_until| not_until.wait_time_from(self.limiter.clock().now()))
    }

    /// Clients currently remembered.
    pub fn clients(&self) -> usize {
        self.limiter.len()
    }
}

/// `Retry-After` in whole seconds: the wait rounded up, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The edge checks of one service.
#[derive(Clone)]
pub struct Edge {
    token: Option<Arc<str>>,
    read_token: Option<Arc<str>>,
    limiter: Option<Arc<RateLimiter>>,
    request_timeout: Duration,
    max_body_bytes: u64,
}

impl Edge {
    /// The checks of `cfg`; `auth` (writes' bearer token) only for a service that takes writes.
    pub fn new(cfg: &EdgeConfig, auth: Option<&WriteAuthConfig>) -> Self {
        Edge {
            token: auth.and_then(|a| a.api_token.as_deref()).filter(|t| !t.is_empty()).map(Arc::from),
            read_token: None,
            limiter: NonZeroU32::new(cfg.rate_limit_per_sec)
                .map(|per_sec| Arc::new(RateLimiter::new(per_sec, cfg.rate_limit_burst))),
            request_timeout: cfg.request_timeout,
            max_body_bytes: cfg.max_body_bytes,
        }
    }

    /// The same checks, with reads needing the bearer token of `auth` if it names one.
    pub fn with_read_auth(mut self, auth: &ReadAuthConfig) -> Self {
        self.read_token = auth.read_token.as_deref().filter(|t| !t.is_empty()).map(Arc::from);
        self
    }

    /// The `Authorization` value that passes the write token check, if writes need one.
    pub fn write_authorization(&self) -> Option<HeaderValue> {
        let token = self.token.as_ref()?;
        HeaderValue::from_str(&format!("Bearer {token}")).ok()
    }

    /// Whether reads need a bearer token.
    pub fn reads_need_token(&self) -> bool {
        self.read_token.is_some()
    }

    /// The answer to a request that fails a check, or `None` to let it through;
    /// `write` marks writes (they need the write token), others are reads
    /// (they need the read token).
    pub fn refusal<B>(&self, req: &Request<B>, write: bool) -> Option<Response<Body>> {
        if self.declares_body_over_limit(req) {
            return Some(http::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than {} bytes; this route takes its input in the query string",
                    self.max_body_bytes
                ),
            ));
        }
        self.access_refusal(req, write)
    }

    /// Largest request body accepted, in bytes.
    pub fn max_body_bytes(&self) -> u64 {
        self.max_body_bytes
    }

    /// Whether the request's `Content-Length` is over [`Edge::max_body_bytes`].
    pub fn declares_body_over_limit<B>(&self, req: &Request<B>) -> bool {
        Self::declares_body_over(req, self.max_body_bytes)
    }

    /// Whether the request's `Content-Length` is over `limit_bytes`.
    pub fn declares_body_over<B>(req: &Request<B>, limit_bytes: u64) -> bool {
        let declared = req.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        declared.is_some_and(|n| n > limit_bytes)
    }

    /// The rate-limit and token checks of [`Edge::refusal`] without the body
    /// size, for an API whose body is its input (it refuses a body too large
    /// in its own words).
    pub fn access_refusal<B>(&self, req: &Request<B>, write: bool) -> Option<Response<Body>> {
        // Rate limiting first: it also bounds guesses at the token.
        if let (Some(limiter), Some(PeerAddr(peer))) = (&self.limiter, req.extensions().get::<PeerAddr>()) {
            if let Err(wait) = limiter.check(peer.ip()) {
                let mut r =
                    http::error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded for this client; slow down");
                r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
                return Some(r);
            }
        }
        let token = if write { &self.token } else { &self.read_token };
        if let Some(token) = token {
            let presented =
                req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if !presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token.as_bytes()))) {
                let mut r = http::error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return Some(r);
            }
        }
        None
    }

    /// The rate-limit check alone (for a browser's preflight, which carries no token).
    pub fn rate_refusal<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        let no_token = Edge { token: None, read_token: None, ..self.clone() };
        no_token.access_refusal(req, false)
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

/// The origins allowed to read from a browser, and the answers to its checks.
#[derive(Clone, Default)]
pub struct Cors {
    origins: Arc<[HeaderValue]>,
    any: bool,
}

/// Why an origin of `--cors-origins` is refused at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CORS origin `{0}` is not `*` or scheme://host[:port] (no path, no trailing slash)")]
pub struct BadOrigin(String);

/// How long a browser may reuse a preflight answer.
const PREFLIGHT_MAX_AGE_SECS: u32 = 600;

impl Cors {
    /// The origins of `cfg`, checked.
    ///
    /// # Errors
    /// [`BadOrigin`] for a value that is no origin.
    pub fn new(cfg: &CorsConfig) -> Result<Self, BadOrigin> {
        let mut origins = Vec::new();
        let mut any = false;
        for raw in cfg.cors_origins.iter().map(|o| o.trim()).filter(|o| !o.is_empty()) {
            if raw == "*" {
                any = true;
                continue;
            }
            let valid = raw.split_once("://").is_some_and(|(scheme, host)| {
                !scheme.is_empty()
                    && scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
                    && !host.is_empty()
                    && !host.contains('/')
                    && host.bytes().all(|b| b.is_ascii_graphic())
            });
            let value = HeaderValue::from_str(raw).ok().filter(|_| valid).ok_or_else(|| BadOrigin(raw.to_owned()))?;
            origins.push(value);
        }
        Ok(Cors { origins: origins.into(), any })
    }

    /// Whether any origin is allowed at all.
    pub fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || self.origins.iter().any(|o| o == origin)
    }

    /// Adds to `resp` the headers that let a page of the request's origin read it
    /// (nothing for a request without an `Origin`, or from an origin not allowed).
    pub fn decorate(&self, origin: Option<&HeaderValue>, resp: &mut Response<Body>) {
        if !self.enabled() {
            return;
        }
        let headers = resp.headers_mut();
        // The answer depends on the Origin header: caches must keep one per origin.
        headers.append(VARY, HeaderValue::from_static("origin"));
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            headers.insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("retry-after"));
        }
    }

    /// The answer to an `OPTIONS` request for a read route: a browser's
    /// preflight from an allowed origin gets the methods and headers it may
    /// use; from another origin, 403; without an `Origin`, the allowed methods.
    pub fn preflight<B>(&self, req: &Request<B>) -> Response<Body> {
        let origin = req.headers().get(ORIGIN);
        let mut r = http::no_content();
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD, OPTIONS"));
        match origin {
            None => {}
            Some(o) if self.allows(o) && req.headers().contains_key(ACCESS_CONTROL_REQUEST_METHOD) => {
                let headers = r.headers_mut();
                headers.insert(ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD"));
                headers.insert(ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization"));
                headers.insert(ACCESS_CONTROL_MAX_AGE, HeaderValue::from(PREFLIGHT_MAX_AGE_SECS));
            }
            Some(o) if self.allows(o) => {}
            Some(_) => r = http::error(StatusCode::FORBIDDEN, "this origin may not read this API"),
        }
        self.decorate(origin, &mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use governor::clock::FakeRelativeClock;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        edge: EdgeConfig,
        #[command(flatten)]
        auth: WriteAuthConfig,
    }

    fn edge(args: &[&str]) -> Edge {
        let cli = Cli::parse_from(std::iter::once("t").chain(args.iter().copied()));
        Edge::new(&cli.edge, Some(&cli.auth))
    }

    #[derive(Parser)]
    struct ReadCli {
        #[command(flatten)]
        edge: EdgeConfig,
        #[command(flatten)]
        read: ReadAuthConfig,
        #[command(flatten)]
        cors: CorsConfig,
    }

    fn read_cli(args: &[&str]) -> ReadCli {
        ReadCli::parse_from(std::iter::once("t").chain(args.iter().copied()))
    }

    #[test]
    fn reads_need_the_read_token_when_one_is_set() {
        let cli = read_cli(&["--read-token", "r34d"]);
        let e = Edge::new(&cli.edge, None).with_read_auth(&cli.read);
        let status = |r: Option<Response<Body>>| r.map(|r| r.status());
        assert_eq!(status(e.refusal(&req(None, None, [1, 1, 1, 1]), false)), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            status(e.refusal(&req(Some("Bearer nope"), None, [1, 1, 1, 1]), false)),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(status(e.refusal(&req(Some("Bearer r34d"), None, [1, 1, 1, 1]), false)), None);
        assert!(e.rate_refusal(&req(None, None, [1, 1, 1, 1])).is_none(), "a preflight carries no token");
        let open = Edge::new(&read_cli(&[]).edge, None).with_read_auth(&read_cli(&[]).read);
        assert_eq!(status(open.refusal(&req(None, None, [1, 1, 1, 1]), false)), None);
    }

    fn from(origin: Option<&str>, preflight: bool) -> Request<()> {
        let mut b = Request::options("/analytics");
        if let Some(o) = origin {
            b = b.header(ORIGIN, o);
        }
        if preflight {
            b = b.header(ACCESS_CONTROL_REQUEST_METHOD, "GET");
        }
        b.body(()).expect("a request")
    }

    #[test]
    fn cors_lets_only_the_configured_origins_read() {
        let cors = Cors::new(&read_cli(&["--cors-origins", "https://a.example,http://localhost:3000"]).cors)
            .expect("valid origins");
        let ok = cors.preflight(&from(Some("https://a.example"), true));
        assert_eq!(ok.status(), StatusCode::NO_CONTENT);
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "https://a.example");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET, HEAD");
        assert_eq!(ok.headers()[ACCESS_CONTROL_ALLOW_HEADERS], "authorization");
        assert_eq!(cors.preflight(&from(Some("https://evil.example"), true)).status(), StatusCode::FORBIDDEN);
        assert_eq!(cors.preflight(&from(None, false)).status(), StatusCode::NO_CONTENT);

        let mut r = http::no_content();
        cors.decorate(Some(&HeaderValue::from_static("http://localhost:3000")), &mut r);
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN], "http://localhost:3000");
        assert_eq!(r.headers()[VARY], "origin");
        let mut r = http::no_content();
        cors.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut r);
        assert!(!r.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN));
    }

    #[test]
    fn cors_is_off_by_default_and_star_allows_any_origin() {
        let off = Cors::new(&read_cli(&[]).cors).expect("no origins");
        assert!(!off.enabled());
        let mut r = http::no_content();
        off.decorate(Some(&HeaderValue::from_static("https://a.example")), &mut r);
        assert!(r.headers().is_empty());
        let any = Cors::new(&read_cli(&["--cors-origins", "*"]).cors).expect("star");
        assert_eq!(
            any.preflight(&from(Some("https://x.example"), true)).headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://x.example"
        );
    }

    #[test]
    fn a_malformed_origin_is_refused_at_startup() {
        for bad in ["a.example", "https://a.example/", "https://a.example/path", "://x"] {
            assert!(Cors::new(&read_cli(&["--cors-origins", bad]).cors).is_err(), "{bad}");
        }
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

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("non-zero")
    }

    #[test]
    fn buckets_refill_at_the_configured_rate() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(nz(10), nz(2), clock.clone());
        let ip: IpAddr = [1, 2, 3, 4].into();
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_ok());
        let wait = limiter.check(ip).expect_err("refused");
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100), "{wait:?}");
        clock.advance(wait);
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_err(), "one token refilled, not two");
        clock.advance(Duration::from_millis(200));
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_err(), "never more than the burst");
    }

    #[test]
    fn the_wait_is_until_the_next_token() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(nz(2), nz(1), clock.clone());
        let ip: IpAddr = [1, 2, 3, 4].into();
        assert!(limiter.check(ip).is_ok());
        clock.advance(Duration::from_millis(100));
        assert_eq!(limiter.check(ip), Err(Duration::from_millis(400)));
    }

    #[test]
    fn retry_after_rounds_the_wait_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(2500)), 3);
    }

    #[test]
    fn idle_clients_are_forgotten_once_the_table_is_full() {
        let clock = FakeRelativeClock::default();
        let mut limiter = RateLimiter::with_clock(nz(10), nz(1), clock.clone());
        limiter.max_clients = 100;
        for i in 0..100u32 {
            assert!(limiter.check(IpAddr::from(i.to_be_bytes())).is_ok());
        }
        assert_eq!(limiter.clients(), 100);
        // Every bucket has refilled: the next size check drops them all.
        clock.advance(Duration::from_secs(1));
        for i in 100..(100 + SIZE_CHECK_EVERY) {
            assert!(limiter.check(IpAddr::from(i.to_be_bytes())).is_ok());
        }
        assert!(limiter.clients() <= SIZE_CHECK_EVERY as usize, "{} clients kept", limiter.clients());
        // A client that is still limited is kept.
        let busy: IpAddr = [10, 0, 0, 1].into();
        assert!(limiter.check(busy).is_ok());
        limiter.limiter.retain_recent();
        assert!(limiter.check(busy).is_err(), "a busy client's state survives the sweep");
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

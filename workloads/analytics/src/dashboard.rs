//! `GET /`: the dashboard, one self-contained page (HTML, CSS and JavaScript
//! inline, hand-drawn SVG charts) that reads this service's own JSON routes.
//!
//! The page sits at the very end of command -> processor -> materializer ->
//! query: in the browser it fetches `/analytics/timeseries` (the last 48
//! hours by hour, the last 30 days by day) and `/analytics/aggregate` (unique
//! users over each range), and keeps `/analytics/live` (Server-Sent Events)
//! open for today's totals and the current hour, so it updates without a
//! reload. It requests nothing from any other host, and its
//! `Content-Security-Policy` tells the browser to refuse if it ever tried.
//!
//! The route passes through the same edge checks as the API. With a read
//! token configured (`READ_TOKEN`), a browser cannot present it (a page load
//! and an `EventSource` carry no `Authorization` header): serve the page
//! through a proxy that adds the header, or leave reads open on a trusted
//! network.

use std::sync::Arc;

use bytes::Bytes;
use common::engine::http::{self, Body};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use ::query::engine::Route;

/// The page, embedded in the binary.
pub const PAGE: &str = include_str!("dashboard.html");

/// What the page may load: nothing but itself and this origin's API. Inline
/// script and style are allowed because the page is a constant with no
/// user-provided content (it writes numbers through `textContent`); the
/// policy's job is to make a request to another host impossible.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The dashboard's route: `GET /`, exactly.
pub fn route() -> Route {
    Route {
        path: "/",
        usage: "GET / (the dashboard)",
        handler: Arc::new(|_, _| Box::pin(async { Ok(page()) }) as ::query::engine::Answer),
    }
}

/// The page with its headers.
fn page() -> Response<Body> {
    let mut r = Response::new(http::full(Bytes::from_static(PAGE.as_bytes())));
    *r.status_mut() = StatusCode::OK;
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    // Revalidate on every load: a new deployment's page shows at once.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_page_is_served_as_html_that_may_only_reach_its_own_origin() {
        let resp = (route().handler)("/", None).await.expect("the page");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
        let csp = resp.headers()["content-security-policy"].to_str().expect("ascii");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
        let body = resp.into_body().collect().await.expect("a whole body").to_bytes();
        assert_eq!(body, PAGE.as_bytes());
    }

    #[test]
    fn the_page_names_no_other_host() {
        // An absolute or scheme-relative URL would be a request to another host.
        for pattern in ["http://", "https://", "ws://", "wss://", "=\"//", "(\"//", "(`//", "url("] {
            assert!(!PAGE.contains(pattern), "the page contains `{pattern}`");
        }
        // The favicon is inline, or the browser would ask for /favicon.ico.
        assert!(PAGE.contains(r#"<link rel="icon" href="data:,">"#));
    }

    #[test]
    fn the_page_reads_only_routes_this_service_serves() {
        for path in ["/analytics/timeseries?", "/analytics/aggregate?", "/analytics/live"] {
            assert!(PAGE.contains(path), "the page reads {path}");
        }
    }

    #[test]
    fn the_elements_the_browser_test_reads_exist() {
        for id in
            ["today-users", "today-clicks", "today-impressions", "hour-clicks", "status", "charts-hour", "charts-day"]
        {
            assert!(PAGE.contains(&format!("id=\"{id}\"")), "#{id} is missing");
        }
    }
}

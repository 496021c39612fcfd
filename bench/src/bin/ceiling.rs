//! The same-run ceiling: a bare hyper server that does no work.
//! `--mode post` answers 204 to everything, `--mode get` a fixed 3-line body.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.into())
    };
    let listen = arg("--listen", "127.0.0.1:18090");
    let get = arg("--mode", "post") == "get";
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |_req| async move {
                let mut r = if get {
                    Response::new(Full::new(Bytes::from_static(b"unique_users,1\nclicks,1\nimpressions,1\n")))
                } else {
                    Response::new(Full::new(Bytes::new()))
                };
                if !get {
                    *r.status_mut() = StatusCode::NO_CONTENT;
                }
                Ok::<_, Infallible>(r)
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

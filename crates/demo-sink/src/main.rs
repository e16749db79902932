//! `switchyard-demo-sink`: a webhook receiver for local runs. Prints one line per delivery
//! (webhook id, path, size, whether the signature checks out) and answers:
//! - `POST /ok/...` → 200;
//! - `POST /status/<code>/...` → that status (e.g. `/status/500` for a failing route,
//!   `/status/429` with `Retry-After: 2`).

mod verify;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use clap::Parser;

/// A webhook receiver for local runs.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
    /// The routes' signing secret (`whsec_…`), to check signatures.
    #[arg(long)]
    secret: Option<String>,
}

async fn receive(
    State(secret): State<Arc<Option<String>>>,
    path: Option<Path<String>>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let path = path.map(|Path(p)| p).unwrap_or_default();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let signature = match secret.as_ref() {
        Some(secret) => match verify::verify(
            secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &body,
            &header("webhook-signature"),
        ) {
            Ok(()) => "valid",
            Err(_) => "INVALID",
        },
        None => "unchecked",
    };
    let status = path
        .strip_prefix("status/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    println!(
        "{} /{path} webhook-id={} bytes={} signature={signature} body={}",
        status.as_u16(),
        header("webhook-id"),
        body.len(),
        String::from_utf8_lossy(&body)
            .chars()
            .take(120)
            .collect::<String>()
    );
    let mut response = HeaderMap::new();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response.insert("retry-after", axum::http::HeaderValue::from_static("2"));
    }
    (status, response)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let app = Router::new()
        .route("/", post(receive))
        .route("/{*path}", post(receive))
        .with_state(Arc::new(args.secret));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("demo sink listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

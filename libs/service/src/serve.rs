//! Serving one HTTP listener: HTTP/1.1 through hyper, with a deadline on reading each request's
//! headers, until shutdown; then the listener closes and the open connections finish what they
//! are answering.
//!
//! Why not `axum::serve`: it gives hyper no timer, so a client that sends its headers a byte at
//! a time (or opens a connection and says nothing) holds it for ever. Here hyper's
//! `header_read_timeout` closes such a connection; the same deadline closes an idle keep-alive
//! connection.

use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How long a client has to send a request's headers when nothing else is set (hyper's own
/// default): the connection is closed without an answer after it.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `app` on `listener` until `shutdown`, then waits for the open connections: each
/// finishes the request it is answering and closes.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_read_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let connections = GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let connection = connections.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.shutdown().await;
}

/// What `axum::serve` does on a failed accept: a connection the peer gave up on is nothing; any
/// other error (typically too many open files) is logged and the loop waits a second so it
/// does not spin.
async fn accept_failed(error: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        error.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(%error, "accepting an http connection");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

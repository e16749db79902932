//! Starting a service: bind its HTTP listener, serve its routes, run its work beside them, and
//! stop both on shutdown — the same for every service.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a service could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The HTTP listener could not be bound.
    #[error("binding {addr}")]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("http server")]
    Serve(#[source] std::io::Error),
}

/// A started service: where its HTTP listener is, and the task running it.
pub struct Running {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Completes once the work has drained and the server has stopped, after shutdown.
    pub task: JoinHandle<Result<(), LaunchError>>,
}

/// Binds `listen`, serves `app` until `shutdown`, and runs `work` (which must itself stop on
/// `shutdown`, draining what it has in flight).
pub async fn launch<W>(
    name: &'static str,
    listen: SocketAddr,
    app: Router,
    shutdown: CancellationToken,
    work: W,
) -> Result<Running, LaunchError>
where
    W: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| LaunchError::Bind {
            addr: listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| LaunchError::Bind {
        addr: listen,
        source,
    })?;
    let task = tokio::spawn(async move {
        let server = tokio::spawn(
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .into_future(),
        );
        tracing::info!(service = name, %http_addr, "running");
        work.await;
        match server.await {
            Ok(result) => result.map_err(LaunchError::Serve),
            Err(join) => Err(LaunchError::Serve(std::io::Error::other(join))),
        }
    });
    Ok(Running { http_addr, task })
}

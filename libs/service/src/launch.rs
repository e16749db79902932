//! Starting a service: take its HTTP listener (an address to bind, or a listener the caller
//! already bound), serve its routes, run its work beside them, and stop both on shutdown — the
//! same for every service.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

use axum::Router;
use tokio::net::TcpListener;
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
    /// The bound listener's address could not be read.
    #[error("reading the http listener's address")]
    LocalAddr(#[source] std::io::Error),
    /// The HTTP server failed.
    #[error("http server")]
    Serve(#[source] std::io::Error),
    /// The service's task panicked or was aborted.
    #[error("the service task ended abnormally")]
    Task(#[source] tokio::task::JoinError),
}

/// Where a service listens: an address to bind (`http.listen`; port 0 picks a free one), or a
/// listener the caller bound already.
#[derive(Debug)]
pub enum Listen {
    /// Bind this address.
    Addr(SocketAddr),
    /// Serve on this listener.
    Listener(TcpListener),
}

impl From<SocketAddr> for Listen {
    fn from(addr: SocketAddr) -> Self {
        Listen::Addr(addr)
    }
}

impl From<TcpListener> for Listen {
    fn from(listener: TcpListener) -> Self {
        Listen::Listener(listener)
    }
}

impl Listen {
    /// The listener: binds the address, or hands back the caller's.
    pub async fn bind(self) -> Result<TcpListener, LaunchError> {
        match self {
            Listen::Addr(addr) => TcpListener::bind(addr)
                .await
                .map_err(|source| LaunchError::Bind { addr, source }),
            Listen::Listener(listener) => Ok(listener),
        }
    }
}

/// A started service: where its HTTP listener is, and the task running it. `T` is whatever
/// else a service reports about itself (the dlq service: its instance id); `()` for most.
#[derive(Debug)]
pub struct Running<T = ()> {
    /// The bound HTTP address (useful with port 0).
    pub http_addr: SocketAddr,
    /// Completes once the work has drained and the server has stopped, after shutdown.
    /// Everything the service runs is inside it: aborting it stops the service as a crash
    /// would.
    pub task: JoinHandle<Result<(), LaunchError>>,
    /// What else the service reports about itself.
    pub info: T,
}

impl<T> Running<T> {
    /// Waits until the service has stopped (after shutdown: work drained, server closed).
    ///
    /// Errors: the server failed ([`LaunchError::Serve`]) or the task panicked or was aborted
    /// ([`LaunchError::Task`]).
    pub async fn finished(self) -> Result<(), LaunchError> {
        self.task.await.map_err(LaunchError::Task)?
    }
}

impl Running {
    /// The same service, reporting `info` too.
    pub fn with_info<T>(self, info: T) -> Running<T> {
        Running {
            http_addr: self.http_addr,
            task: self.task,
            info,
        }
    }
}

/// Serves `app` on `listen` until `shutdown`, and runs `work` (which must itself stop on
/// `shutdown`, draining what it has in flight) in the same task. Returns once the listener is
/// bound.
///
/// `work` is boxed before anything is awaited, so a service's (large) work future never sits
/// inside its `start` future.
pub fn launch<W>(
    name: &'static str,
    listen: impl Into<Listen>,
    app: Router,
    shutdown: CancellationToken,
    work: W,
) -> impl Future<Output = Result<Running, LaunchError>>
where
    W: Future<Output = ()> + Send + 'static,
{
    let listen = listen.into();
    let work: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(work);
    async move {
        let listener = listen.bind().await?;
        let http_addr = listener.local_addr().map_err(LaunchError::LocalAddr)?;
        let task = tokio::spawn(async move {
            tracing::info!(service = name, %http_addr, "running");
            let server = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .into_future();
            let (served, ()) = tokio::join!(server, work);
            tracing::info!(service = name, "stopped");
            served.map_err(LaunchError::Serve)
        });
        Ok(Running {
            http_addr,
            task,
            info: (),
        })
    }
}

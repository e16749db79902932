//! Starting a service: take its HTTP listener (an address to bind, or a listener the caller
//! already bound) — and a second one for the probes when they live apart from the service's
//! public routes (ingress) — serve the routes, run the service's work beside them, and stop
//! everything on shutdown; the same for every service.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::serve::{DEFAULT_HEADER_READ_TIMEOUT, serve};

/// Why a service could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// An HTTP listener could not be bound.
    #[error(
        "binding {addr} (the service's http.listen, or ingress's http.probes_listen): another process may hold it; set a free address"
    )]
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

/// One HTTP listener of a service: where it listens, what it serves, and how long a client has
/// to send a request's headers (default [`DEFAULT_HEADER_READ_TIMEOUT`]).
#[derive(Debug)]
pub struct HttpServer {
    /// Where to listen.
    pub listen: Listen,
    /// The routes.
    pub app: Router,
    /// A connection whose request headers are not in by then is closed without an answer (an
    /// idle keep-alive connection too).
    pub header_read_timeout: Duration,
}

impl HttpServer {
    /// `app` on `listen`, with the default header read timeout.
    pub fn new(listen: impl Into<Listen>, app: Router) -> Self {
        Self {
            listen: listen.into(),
            app,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
        }
    }

    /// The same, closing connections whose headers take longer than `timeout`.
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }
}

/// A started service: where its HTTP listeners are, and the task running it. `T` is whatever
/// else a service reports about itself (the dlq service: its instance id); `()` for most.
#[derive(Debug)]
pub struct Running<T = ()> {
    /// The bound address of the service's main listener (useful with port 0): ingress's
    /// producer API; for the other services, their probes and metrics.
    pub http_addr: SocketAddr,
    /// Where `/healthz`, `/readyz` and `/metrics` answer: a listener of their own (ingress's
    /// `http.probes_listen`), or `http_addr` when the service has one listener.
    pub probes_addr: SocketAddr,
    /// Completes once the work has drained and the servers have stopped, after shutdown.
    /// Everything the service runs is inside it: aborting it stops the service as a crash
    /// would.
    pub task: JoinHandle<Result<(), LaunchError>>,
    /// What else the service reports about itself.
    pub info: T,
}

impl<T> Running<T> {
    /// Waits until the service has stopped (after shutdown: work drained, servers closed).
    ///
    /// Errors: the task panicked or was aborted ([`LaunchError::Task`]).
    pub async fn finished(self) -> Result<(), LaunchError> {
        self.task.await.map_err(LaunchError::Task)?
    }
}

impl Running {
    /// The same service, reporting `info` too.
    pub fn with_info<T>(self, info: T) -> Running<T> {
        Running {
            http_addr: self.http_addr,
            probes_addr: self.probes_addr,
            task: self.task,
            info,
        }
    }
}

/// Serves `app` on `listen` until `shutdown`, and runs `work` (which must itself stop on
/// `shutdown`, draining what it has in flight) in the same task. Returns once the listener is
/// bound. [`launch_with`] with one listener.
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
    launch_with(name, HttpServer::new(listen, app), None, shutdown, work)
}

/// Serves `main` (and `probes`, when the probes have a listener of their own) until `shutdown`,
/// and runs `work` (which must itself stop on `shutdown`, draining what it has in flight) in
/// the same task. Returns once every listener is bound; a listener that cannot be bound stops
/// the start ([`LaunchError::Bind`]).
///
/// `work` is boxed before anything is awaited, so a service's (large) work future never sits
/// inside its `start` future.
pub fn launch_with<W>(
    name: &'static str,
    main: HttpServer,
    probes: Option<HttpServer>,
    shutdown: CancellationToken,
    work: W,
) -> impl Future<Output = Result<Running, LaunchError>>
where
    W: Future<Output = ()> + Send + 'static,
{
    let work: Pin<Box<dyn Future<Output = ()> + Send>> = Box::pin(work);
    async move {
        let main = Bound::bind(main).await?;
        let probes = match probes {
            Some(probes) => Some(Bound::bind(probes).await?),
            None => None,
        };
        let http_addr = main.addr;
        let probes_addr = probes.as_ref().map_or(http_addr, |probes| probes.addr);
        let task = tokio::spawn(async move {
            tracing::info!(service = name, %http_addr, %probes_addr, "running");
            let probes = async {
                if let Some(probes) = probes {
                    probes.serve(shutdown.clone()).await;
                }
            };
            tokio::join!(main.serve(shutdown.clone()), probes, work);
            tracing::info!(service = name, "stopped");
            Ok(())
        });
        Ok(Running {
            http_addr,
            probes_addr,
            task,
            info: (),
        })
    }
}

/// An [`HttpServer`] whose listener is bound.
struct Bound {
    /// The bound listener.
    listener: TcpListener,
    /// Its address.
    addr: SocketAddr,
    /// The routes.
    app: Router,
    /// See [`HttpServer::header_read_timeout`].
    header_read_timeout: Duration,
}

impl Bound {
    /// Binds `server`'s listener.
    async fn bind(server: HttpServer) -> Result<Self, LaunchError> {
        let listener = server.listen.bind().await?;
        let addr = listener.local_addr().map_err(LaunchError::LocalAddr)?;
        Ok(Self {
            listener,
            addr,
            app: server.app,
            header_read_timeout: server.header_read_timeout,
        })
    }

    /// Serves until `shutdown`, then lets the open connections finish.
    async fn serve(self, shutdown: CancellationToken) {
        serve(self.listener, self.app, self.header_read_timeout, shutdown).await;
    }
}

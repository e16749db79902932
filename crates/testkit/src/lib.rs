//! Test harness for Switchyard's integration tests: real `nats-server` processes, never a fake.
//!
//! - [`NatsServer`]: one JetStream server from `nats/server/single.conf` on free ports with a
//!   temporary store; can be killed (`kill -9`) and restarted on the same port and store.
//! - [`NatsCluster`]: three servers from `nats/server/cluster-n*.conf` on loopback; any node
//!   can be killed and restarted.
//! - [`stored_messages`]: what a stream holds, read without consuming.
//! - [`http_get`]: a plain HTTP/1.1 GET, for a service's probes and metrics.
//! - [`publish_raw`]: a publish over the raw protocol, for header blocks and subjects the Rust
//!   client cannot produce.
//! - [`Browser`]: a headless Chromium (chromedriver on a free port, a fresh profile) for
//!   end-to-end browser tests, with waits on page text and screenshots.
//! - [`wait_for`]: polls a condition until it holds or a deadline passes — tests wait on
//!   conditions, never on bare sleeps.
//!
//! The nats-server binary is the pinned one installed by `scripts/install-nats-server.sh` into
//! `.tools/bin` (override with `NATS_SERVER_BIN`); a different version is refused. The browser
//! is Debian's `chromium` with its `chromium-driver`, which `.ci/run` installs.

mod browser;
mod cluster;
mod http;
mod node;
mod raw;
mod streams;
mod wait;

pub use browser::Browser;
pub use cluster::NatsCluster;
pub use http::{http_get, metric};
pub use node::{NatsServer, free_port};
pub use raw::publish_raw;
pub use streams::{
    backpressure_stream, backpressure_streams, set_max_messages, stored_count, stored_count_in,
    stored_messages,
};
pub use wait::wait_for;

use std::path::PathBuf;

/// The nats-server version every test runs against (`nats/nats-server.version`).
pub const PINNED_VERSION: &str = include_str!("../../../nats/nats-server.version");

/// The workspace root (to find `nats/` and `.tools/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of the project's server configs.
pub fn server_config_dir() -> PathBuf {
    workspace_root().join("nats/server")
}

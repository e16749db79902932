//! Cross-crate integration tests against real nats-server processes (one test binary).

mod api;
mod backup;
mod cluster;
mod console;
mod encryption;
mod hostile_ids;
mod permissions;
mod pipeline;
mod provisioning;
mod registry_cache;
mod storage;

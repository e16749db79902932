//! One module per CLI command group.

pub mod dlq;
pub mod keys;
pub mod limits;
pub mod provision;
pub mod publish;
pub mod routes;
pub mod status;
pub mod tenants;

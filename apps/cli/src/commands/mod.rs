//! One module per CLI command group.

pub mod attempts;
pub mod backup;
pub mod destinations;
pub mod dlq;
pub mod doctor;
pub mod encryption;
pub mod events;
pub mod keys;
pub mod limits;
pub mod provision;
pub mod publish;
pub mod routes;
pub mod sealing;
pub mod shell;
pub mod status;
pub mod tenants;

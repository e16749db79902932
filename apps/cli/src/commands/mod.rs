//! One module per CLI command.

pub mod provision;
pub mod status;

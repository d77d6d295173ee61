//! The binary's subcommands besides `serve`: small tools for operators and scripts.
//!
//! - [`publish`]: send one message through `POST /publish` or SQS.
//! - [`tail`]: follow sites over protocol v2 and print publications as JSON lines, reconnecting
//!   and recovering what was missed.
//! - [`healthcheck`]: exit 0 if the local relay answers `/healthz` (for container HEALTHCHECKs).
//!
//! Exit codes: 0 success; 1 refused by the relay (the reason is printed); 2 bad arguments;
//! 3 the relay or queue could not be reached.

pub mod healthcheck;
pub mod publish;
pub mod tail;

/// A tool's failure, mapped to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The relay (or queue) refused the request.
    #[error("{0}")]
    Refused(String),
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The relay or queue could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

impl ToolError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Refused(_) => 1,
            ToolError::Usage(_) => 2,
            ToolError::Unreachable(_) => 3,
        }
    }
}

//! medrl-serve: `medrl serve`, an OpenAI-compatible HTTP server over the rollout engine, and the
//! load generator that measures it (`medrl bench serve`, the load tests).
//!
//! Modules, in dependency order: [`protocol`] (the wire format and its checks) < [`text`]
//! (streamed detokenization, stop strings) < [`worker`] (one engine thread per served model) <
//! [`metrics`] < [`server`] (routes, admission, responses); [`loadgen`] is a client and uses
//! none of them.
//!
//! Imports medrl-lm only: the server knows models, tokenizers and the engine, not training,
//! rewards or tasks.

pub mod loadgen;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod text;
pub mod worker;

pub use server::{serve, ServeOptions, ServedModel};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve: {0}")]
    Config(String),
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("serve: {0}")]
    Io(std::io::Error),
    #[error("load generator: {0}")]
    Client(String),
}

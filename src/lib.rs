//! Sluice: a KServe V2 inference gateway with dynamic batching, queue backpressure and in-process ONNX Runtime.
//!
//! A request flows one way: [`server`] (HTTP) → [`protocol`] (decode) → [`backend::signature`] (validate) →
//! [`scheduler`] (queue, batch) → [`backend`] (run) → back out through [`protocol`] (encode).
//! See `docs/ARCHITECTURE.md`.

pub mod admission;
pub mod app;
pub mod backend;
pub mod cache;
pub mod bench;
pub mod config;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod repository;
pub mod scaling;
pub mod scheduler;
pub mod server;
pub mod tensor;
#[cfg(test)]
pub(crate) mod testing;

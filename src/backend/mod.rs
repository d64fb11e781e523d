//! Backends run batches. A backend is loaded once per model version and hands out instances; each instance is owned by
//! one dedicated thread of the scheduler, so a backend may block freely inside [`BackendInstance::infer`].

pub mod onnx;
pub mod signature;

use crate::tensor::Tensor;
pub use signature::{ModelSignature, TensorSpec};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot load model {path}: {message}")]
    Load { path: String, message: String },
    #[error("model {path} uses {what}, which Sluice cannot serve")]
    Unsupported { path: String, what: String },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("ONNX Runtime is not available: {0}")]
    Runtime(String),
}

/// One runnable copy of a model (an ONNX Runtime session, a connection, ...). Not shared between threads.
pub trait BackendInstance: Send {
    /// Runs one batch. `inputs` follow [`ModelSignature::inputs`] order; outputs follow [`ModelSignature::outputs`].
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
}

/// What loading a model version produced.
pub struct LoadedBackend {
    pub signature: ModelSignature,
    /// Triton's platform name, e.g. `onnxruntime_onnx`.
    pub platform: &'static str,
    /// The execution provider the sessions really run on (after any fallback), e.g. `cpu`.
    pub execution_provider: String,
    pub instances: Vec<Box<dyn BackendInstance>>,
}

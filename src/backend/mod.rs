//! Backends run batches. A backend is loaded once per model version and hands the scheduler an [`Executor`]: either
//! blocking instances, each owned by one dedicated thread (so a backend may block freely inside
//! [`BackendInstance::infer`]), or one [`AsyncBackend`] whose work is waiting on the network (remote upstreams), which
//! runs many batches at once on the async runtime.

pub mod onnx;
pub mod remote;
pub mod signature;

use crate::tensor::Tensor;
use bytes::Bytes;
pub use remote::UpstreamError;
pub use signature::{ModelSignature, TensorSpec};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

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
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// One runnable copy of a model (an ONNX Runtime session, a connection, ...). Not shared between threads.
pub trait BackendInstance: Send {
    /// Runs one batch. `inputs` follow [`ModelSignature::inputs`] order; outputs follow [`ModelSignature::outputs`].
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError>;
}

/// The answer of an [`AsyncBackend`]: outputs in [`ModelSignature::outputs`] order.
pub type BackendFuture = Pin<Box<dyn Future<Output = Result<Vec<Tensor>, BackendError>> + Send + 'static>>;

/// A V2 HTTP inference body as the client sent it: JSON, or a JSON header of `header_length` bytes and binary tensors.
#[derive(Clone, Debug)]
pub struct RawInfer {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

/// The answer to a [`RawInfer`], its body as the model's server sent it.
#[derive(Clone, Debug)]
pub struct RawAnswer {
    pub body: Bytes,
    pub header_length: Option<usize>,
}

pub type ForwardFuture = Pin<Box<dyn Future<Output = Result<RawAnswer, BackendError>> + Send + 'static>>;

/// A backend that waits rather than computes: it must never block, and may run many batches at once.
pub trait AsyncBackend: Send + Sync + 'static {
    /// Runs one batch. `inputs` follow [`ModelSignature::inputs`] order. `deadline`: when the batch's clients stop
    /// waiting (see [`crate::scheduler::Job::deadline`]).
    fn infer(&self, inputs: Vec<Tensor>, deadline: Option<std::time::Instant>) -> BackendFuture;

    /// Whether [`AsyncBackend::forward`] works: the model runs behind another V2 HTTP server that can take a client's
    /// body as it is.
    fn can_forward(&self) -> bool {
        false
    }

    /// Sends a client's V2 HTTP body on as it is and returns the answer's body as it comes (checked to be a V2
    /// answer, not decoded), for requests that need nothing of the gateway but a pass: no batching, no cache.
    fn forward(&self, _request: RawInfer) -> ForwardFuture {
        Box::pin(async { Err(BackendError::Run("this backend cannot forward requests".into())) })
    }
}

/// How the scheduler runs a model's batches.
pub enum Executor {
    /// Blocking instances, each on its own thread; one batch per instance at a time.
    Threads(Vec<Box<dyn BackendInstance>>),
    /// One non-blocking backend with at most `concurrency` batches in flight, run as tasks of the async runtime.
    Async { backend: Arc<dyn AsyncBackend>, concurrency: usize },
}

impl Executor {
    /// Batches that may run at the same time.
    pub fn concurrency(&self) -> usize {
        match self {
            Executor::Threads(instances) => instances.len(),
            Executor::Async { concurrency, .. } => *concurrency,
        }
    }
}

/// What loading a model version produced.
pub struct LoadedBackend {
    pub signature: ModelSignature,
    /// Triton's platform name, e.g. `onnxruntime_onnx`.
    pub platform: &'static str,
    /// The execution provider the sessions really run on (after any fallback), e.g. `cpu`.
    pub execution_provider: String,
    pub executor: Executor,
}

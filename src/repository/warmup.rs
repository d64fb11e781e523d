//! Warm-up: requests shaped from a version's signature, run through its own scheduler (so its sessions, threads and
//! batcher all take part) before the version is ready. The first runs of an ONNX Runtime session allocate and pick
//! kernels; doing them here keeps that latency away from the first clients, and a version that cannot answer is
//! never served.

use super::ModelVersion;
use crate::backend::TensorSpec;
use crate::config::{ConfigError, WarmupData, WarmupFile};
use crate::scheduler::Job;
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;
use std::path::Path;
use std::time::Duration;

/// The warm-up of one version: the rows of each request, in order (empty: no warm-up).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    rows: Vec<usize>,
    data: WarmupData,
    timeout: Duration,
    /// Whether the model batches (inputs get `rows` as their first dimension).
    batching: bool,
}

impl Plan {
    pub fn new(file: &WarmupFile, max_batch_size: usize, toml_path: &Path) -> Result<Plan, ConfigError> {
        Ok(Plan { rows: file.plan(max_batch_size, toml_path)?, data: file.data, timeout: file.timeout, batching: max_batch_size > 0 })
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Requests it runs.
    pub fn len(&self) -> usize {
        self.rows.len()
    }
}

/// Runs `model`'s warm-up, one request after another, within its timeout. The error says which request failed and why.
pub async fn run(model: &ModelVersion) -> Result<(), String> {
    let plan = &model.warmup;
    if plan.is_empty() {
        return Ok(());
    }
    let all = async {
        for (i, &rows) in plan.rows.iter().enumerate() {
            let what = || format!("warm-up request {} of {} ({rows} rows)", i + 1, plan.rows.len());
            let inputs = model
                .signature
                .inputs
                .iter()
                .map(|spec| input(spec, plan.batching.then_some(rows), plan.data))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: cannot build its inputs: {e}", what()))?;
            let job = Job { inputs, rows: if plan.batching { rows } else { 1 }, priority: None, timeout: None, deadline: None };
            let outputs = model.scheduler.infer(job).await.map_err(|e| format!("{} failed: {e}", what()))?;
            if outputs.len() != model.signature.outputs.len() {
                return Err(format!("{} returned {} outputs, the model declares {}", what(), outputs.len(), model.signature.outputs.len()));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(plan.timeout, all).await {
        Ok(result) => result,
        Err(_) => Err(format!("warm-up did not finish within its timeout of {:?} (warmup.timeout)", plan.timeout)),
    }
}

/// One input: the declared dims, with `rows` first when the model batches and every other dynamic dim 1.
fn input(spec: &TensorSpec, rows: Option<usize>, data: WarmupData) -> Result<Tensor, crate::tensor::TensorError> {
    let shape: Vec<usize> = spec
        .dims
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, rows) {
            (0, Some(rows)) => rows,
            _ if d < 0 => 1,
            _ => d as usize,
        })
        .collect();
    let count = crate::tensor::element_count(&shape).ok_or_else(|| crate::tensor::TensorError::ShapeOverflow(shape.clone()))?;
    let Some(size) = spec.dtype.element_size() else {
        let items: Vec<String> = match data {
            WarmupData::Zeros => vec![String::new(); count],
            WarmupData::Random => (0..count).map(|_| format!("warmup-{}", rand::random::<u16>())).collect(),
        };
        return Tensor::from_byte_strings(shape, &items);
    };
    let bytes = match data {
        WarmupData::Zeros => vec![0u8; count * size],
        WarmupData::Random => {
            let mut out = Vec::with_capacity(count * size);
            for _ in 0..count {
                random_element(spec.dtype, &mut out);
            }
            out
        }
    };
    Tensor::new(spec.dtype, shape, Bytes::from(bytes))
}

/// Appends one random element: floats uniform in [0, 1), integers and booleans 0 or 1 (valid as an index or a flag).
fn random_element(dtype: DataType, out: &mut Vec<u8>) {
    let bit = rand::random::<bool>() as u8;
    match dtype {
        DataType::F16 => out.extend(half::f16::from_f32(rand::random::<f32>()).to_le_bytes()),
        DataType::F32 => out.extend(rand::random::<f32>().to_le_bytes()),
        DataType::F64 => out.extend(rand::random::<f64>().to_le_bytes()),
        other => {
            let size = other.element_size().unwrap_or(1);
            out.push(bit);
            out.extend(std::iter::repeat_n(0, size - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{AsyncBackend, BackendError, BackendFuture, Executor, ModelSignature};
    use crate::config::{CacheConfig, ModelDefaults, ModelFile};
    use crate::metrics::Metrics;
    use crate::repository::loader::{LoadContext, VersionParts};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn spec(name: &str, dtype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, dims: dims.to_vec() }
    }

    #[test]
    fn inputs_are_shaped_from_the_signature() {
        let t = input(&spec("x", DataType::F32, &[-1, 4, -1]), Some(3), WarmupData::Zeros).unwrap();
        assert_eq!(t.shape(), [3, 4, 1]);
        assert!(t.data().iter().all(|&b| b == 0));
        let t = input(&spec("x", DataType::I64, &[2, -1]), None, WarmupData::Random).unwrap();
        assert_eq!(t.shape(), [2, 1]);
        assert!(t.data().chunks(8).all(|c| i64::from_le_bytes(c.try_into().unwrap()) <= 1));
        let t = input(&spec("s", DataType::Bytes, &[-1, 2]), Some(2), WarmupData::Random).unwrap();
        assert_eq!(t.byte_strings().unwrap().len(), 4);
        for dtype in DataType::ALL {
            for data in [WarmupData::Zeros, WarmupData::Random] {
                let t = input(&spec("x", dtype, &[-1, 3]), Some(2), data).unwrap();
                assert_eq!((t.dtype(), t.shape()), (dtype, &[2usize, 3][..]));
            }
        }
    }

    /// An async backend that answers (or fails) every batch and counts the rows it saw.
    struct Fake {
        fail: bool,
        rows: Arc<AtomicUsize>,
    }

    impl AsyncBackend for Fake {
        fn infer(&self, inputs: Vec<Tensor>, _deadline: Option<std::time::Instant>) -> BackendFuture {
            let (fail, rows) = (self.fail, self.rows.clone());
            Box::pin(async move {
                rows.fetch_add(inputs[0].rows(), Ordering::SeqCst);
                match fail {
                    true => Err(BackendError::Run("the fake backend fails".into())),
                    false => Ok(vec![inputs[0].clone()]),
                }
            })
        }
    }

    fn version(fail: bool, warmup: &str, rows: Arc<AtomicUsize>) -> ModelVersion {
        let signature = ModelSignature { inputs: vec![spec("x", DataType::F32, &[-1, 4])], outputs: vec![spec("y", DataType::F32, &[-1, 4])] };
        let file: ModelFile = toml::from_str(warmup).unwrap();
        let path = Path::new("m/model.toml");
        let settings = file.resolve(&ModelDefaults::default(), true, path).unwrap();
        let plan = Plan::new(&file.warmup, settings.max_batch_size, path).unwrap();
        let parts = VersionParts {
            signature,
            platform: "fake",
            execution_provider: "fake".into(),
            settings,
            executor: Executor::Async { backend: Arc::new(Fake { fail, rows }), concurrency: 1 },
            fingerprint: [0; 32],
            warmup: plan,
        };
        let context = LoadContext { defaults: ModelDefaults::default(), cache: CacheConfig::default(), metrics: Metrics::new(false) };
        context.start("m", 1, parts, None)
    }

    #[tokio::test]
    async fn warmup_runs_through_the_scheduler_and_reports_failures() {
        let rows = Arc::new(AtomicUsize::new(0));
        let ok = version(false, "max_batch_size = 8\n[warmup]\nrequests = 2\n", rows.clone());
        assert!(!ok.is_ready(), "not ready before its warm-up");
        run(&ok).await.unwrap();
        assert_eq!(rows.load(Ordering::SeqCst), 2 + 2 * 8, "two requests of 1 row, two of max_batch_size");

        let failing = version(true, "max_batch_size = 8\n[warmup]\nrequests = 1\nbatch_sizes = [3]\n", Arc::new(AtomicUsize::new(0)));
        let err = run(&failing).await.unwrap_err();
        assert!(err.contains("warm-up request 1 of 1 (3 rows) failed") && err.contains("the fake backend fails"), "{err}");

        let none = version(true, "max_batch_size = 8\n", Arc::new(AtomicUsize::new(0)));
        assert!(none.is_ready(), "without a warm-up a version is ready at once");
        run(&none).await.unwrap();
    }
}

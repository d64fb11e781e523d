//! In-process ONNX Runtime through the `ort` crate, loaded at run time (`load-dynamic`) from the library that
//! `scripts/setup.sh` takes from the PyPI wheel. Each instance owns one session; sessions never run on async workers.

use super::{BackendError, BackendInstance, Executor, LoadedBackend, ModelSignature, TensorSpec};
use crate::config::{ExecutionProviderKind, ModelSettings};
use crate::tensor::bytemuck_lite::{as_bytes, Pod};
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Where the library sits after `scripts/setup.sh`.
pub const DEFAULT_LIBRARY: &str = ".onnxruntime/libonnxruntime.so.1.31.1";

static ENVIRONMENT: OnceLock<ort::environment::Environment> = OnceLock::new();

/// Picks the library path: the config's, else `ORT_DYLIB_PATH`, else the set-up script's location.
pub fn library_path(configured: Option<&Path>) -> PathBuf {
    configured
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_LIBRARY))
}

/// Loads ONNX Runtime once per process. A missing or incompatible library is an error that says how to fix it.
pub fn init_runtime(configured: Option<&Path>) -> Result<(), BackendError> {
    if ENVIRONMENT.get().is_some() {
        return Ok(());
    }
    let path = library_path(configured);
    let fix = "run `bash scripts/setup.sh` (it fetches ONNX Runtime 1.31.1 from PyPI into .onnxruntime/), \
               or point ORT_DYLIB_PATH or [onnxruntime] library at libonnxruntime.so 1.31 or newer";
    if !path.is_file() {
        return Err(BackendError::Runtime(format!("no ONNX Runtime library at {}; {fix}", path.display())));
    }
    let builder = ort::init_from(&path).map_err(|e| BackendError::Runtime(format!("{e}; {fix}")))?;
    let env = builder.with_name("sluice").build().map_err(|e| BackendError::Runtime(format!("{e}; {fix}")))?;
    let _ = ENVIRONMENT.set(env);
    Ok(())
}

fn environment() -> Result<&'static ort::environment::Environment, BackendError> {
    ENVIRONMENT.get().ok_or_else(|| BackendError::Runtime("ONNX Runtime was not initialised (call init_runtime first)".into()))
}

fn map_dtype(ty: TensorElementType) -> Option<DataType> {
    Some(match ty {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn spec_of(outlet: &ort::value::Outlet, path: &Path) -> Result<TensorSpec, BackendError> {
    let unsupported = |what: String| BackendError::Unsupported { path: path.display().to_string(), what };
    match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = map_dtype(*ty).ok_or_else(|| unsupported(format!("tensor '{}' of element type {ty:?}", outlet.name())))?;
            Ok(TensorSpec { name: outlet.name().to_string(), dtype, dims: shape.iter().copied().collect() })
        }
        other => Err(unsupported(format!("'{}' of non-tensor type {other:?}", outlet.name()))),
    }
}

fn build_session(path: &Path, threads: usize, provider: ExecutionProviderKind) -> Result<Session, String> {
    let env = environment().map_err(|e| e.to_string())?;
    let mut builder = Session::builder(env).map_err(|e| e.to_string())?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(|e| e.to_string())?;
    }
    builder = match provider {
        ExecutionProviderKind::Cpu => builder,
        ExecutionProviderKind::Cuda => builder
            .with_execution_providers([ort::ep::CUDA::default().build().error_on_failure()])
            .map_err(|e| e.to_string())?,
        ExecutionProviderKind::Tensorrt => builder
            .with_execution_providers([ort::ep::TensorRT::default().build().error_on_failure()])
            .map_err(|e| e.to_string())?,
    };
    builder.commit_from_file(path).map_err(|e| e.to_string())
}

/// Loads `settings.instances` sessions of the model at `path`, trying the configured execution providers in order
/// and falling back to CPU with a warning.
pub fn load(path: &Path, settings_for: impl FnOnce(&ModelSignature) -> Result<ModelSettings, BackendError>) -> Result<(LoadedBackend, ModelSettings), BackendError> {
    let load_err = |message: String| BackendError::Load { path: path.display().to_string(), message };
    // A first CPU session gives the signature (needed to resolve settings such as the batch size).
    let probe = build_session(path, 1, ExecutionProviderKind::Cpu).map_err(load_err)?;
    let signature = ModelSignature {
        inputs: probe.inputs().iter().map(|o| spec_of(o, path)).collect::<Result<_, _>>()?,
        outputs: probe.outputs().iter().map(|o| spec_of(o, path)).collect::<Result<_, _>>()?,
    };
    drop(probe);
    let settings = settings_for(&signature)?;

    let mut chosen = None;
    for &provider in &settings.execution_providers {
        match build_session(path, settings.threads, provider) {
            Ok(session) => {
                chosen = Some((provider, session));
                break;
            }
            Err(e) if provider != ExecutionProviderKind::Cpu => {
                tracing::warn!(model = %path.display(), ?provider, error = %e, "execution provider unavailable; trying the next one");
            }
            Err(e) => return Err(load_err(e)),
        }
    }
    let (provider, first) = match chosen {
        Some(c) => c,
        None => {
            tracing::warn!(model = %path.display(), "no configured execution provider is available; falling back to CPU");
            (ExecutionProviderKind::Cpu, build_session(path, settings.threads, ExecutionProviderKind::Cpu).map_err(load_err)?)
        }
    };
    let mut instances: Vec<Box<dyn BackendInstance>> = vec![Box::new(OnnxInstance { session: first, signature: signature.clone() })];
    for _ in 1..settings.instances {
        let session = build_session(path, settings.threads, provider).map_err(load_err)?;
        instances.push(Box::new(OnnxInstance { session, signature: signature.clone() }));
    }
    let execution_provider = format!("{provider:?}").to_lowercase();
    Ok((LoadedBackend { signature, platform: "onnxruntime_onnx", execution_provider, executor: Executor::Threads(instances) }, settings))
}

struct OnnxInstance {
    session: Session,
    signature: ModelSignature,
}

/// Views aligned bytes as a typed slice, or copies them into an aligned vector when they are not aligned.
fn typed<T: Pod>(data: &Bytes) -> Cow<'_, [T]> {
    let size = std::mem::size_of::<T>();
    if (data.as_ptr() as usize) % std::mem::align_of::<T>() == 0 && data.len() % size == 0 {
        // SAFETY: aligned, in bounds, and T is plain old data (every bit pattern valid).
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<T>(), data.len() / size) })
    } else {
        let mut out = Vec::<T>::with_capacity(data.len() / size);
        for chunk in data.chunks_exact(size) {
            // SAFETY: chunk has exactly size_of::<T>() bytes; read_unaligned has no alignment need.
            out.push(unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<T>()) });
        }
        Cow::Owned(out)
    }
}

fn run_err(e: impl std::fmt::Display) -> BackendError {
    BackendError::Run(e.to_string())
}

/// Keeps typed views (or copies) of the inputs alive while the session runs.
enum Staged<'a> {
    U8(Cow<'a, [u8]>),
    U16(Cow<'a, [u16]>),
    U32(Cow<'a, [u32]>),
    U64(Cow<'a, [u64]>),
    I8(Cow<'a, [i8]>),
    I16(Cow<'a, [i16]>),
    I32(Cow<'a, [i32]>),
    I64(Cow<'a, [i64]>),
    F16(Cow<'a, [half::f16]>),
    F32(Cow<'a, [f32]>),
    F64(Cow<'a, [f64]>),
    Bool(Vec<bool>),
    Strings(Vec<String>),
}

fn stage(t: &Tensor) -> Result<Staged<'_>, BackendError> {
    let d = t.data();
    Ok(match t.dtype() {
        DataType::U8 => Staged::U8(typed(d)),
        DataType::U16 => Staged::U16(typed(d)),
        DataType::U32 => Staged::U32(typed(d)),
        DataType::U64 => Staged::U64(typed(d)),
        DataType::I8 => Staged::I8(typed(d)),
        DataType::I16 => Staged::I16(typed(d)),
        DataType::I32 => Staged::I32(typed(d)),
        DataType::I64 => Staged::I64(typed(d)),
        DataType::F16 => Staged::F16(typed(d)),
        DataType::F32 => Staged::F32(typed(d)),
        DataType::F64 => Staged::F64(typed(d)),
        // Any non-zero byte is true: never reinterpret client bytes as `bool` directly.
        DataType::Bool => Staged::Bool(d.iter().map(|&b| b != 0).collect()),
        DataType::Bytes => Staged::Strings(
            t.byte_strings().map_err(run_err)?.into_iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect(),
        ),
    })
}

fn to_value<'a>(staged: &'a Staged<'_>, shape: &[usize]) -> Result<SessionInputValue<'a>, BackendError> {
    let shape: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    macro_rules! view {
        ($v:expr) => {
            TensorRef::from_array_view((shape, &$v[..])).map_err(run_err)?.into()
        };
    }
    Ok(match staged {
        Staged::U8(v) => view!(v),
        Staged::U16(v) => view!(v),
        Staged::U32(v) => view!(v),
        Staged::U64(v) => view!(v),
        Staged::I8(v) => view!(v),
        Staged::I16(v) => view!(v),
        Staged::I32(v) => view!(v),
        Staged::I64(v) => view!(v),
        Staged::F16(v) => view!(v),
        Staged::F32(v) => view!(v),
        Staged::F64(v) => view!(v),
        Staged::Bool(v) => view!(v),
        Staged::Strings(v) => ort::value::Tensor::from_string_array((shape, &v[..])).map_err(run_err)?.into(),
    })
}

fn from_value(value: &DynValue, spec: &TensorSpec) -> Result<Tensor, BackendError> {
    macro_rules! copy_out {
        ($t:ty) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(run_err)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::new(spec.dtype, shape, Bytes::copy_from_slice(as_bytes(data))).map_err(run_err)
        }};
    }
    match spec.dtype {
        DataType::U8 => copy_out!(u8),
        DataType::U16 => copy_out!(u16),
        DataType::U32 => copy_out!(u32),
        DataType::U64 => copy_out!(u64),
        DataType::I8 => copy_out!(i8),
        DataType::I16 => copy_out!(i16),
        DataType::I32 => copy_out!(i32),
        DataType::I64 => copy_out!(i64),
        DataType::F16 => copy_out!(half::f16),
        DataType::F32 => copy_out!(f32),
        DataType::F64 => copy_out!(f64),
        DataType::Bool => {
            let (shape, data) = value.try_extract_tensor::<bool>().map_err(run_err)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::new(DataType::Bool, shape, data.iter().map(|&b| b as u8).collect::<Vec<u8>>().into()).map_err(run_err)
        }
        DataType::Bytes => {
            let (shape, strings) = value.try_extract_strings().map_err(run_err)?;
            let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
            Tensor::from_byte_strings(shape, &strings).map_err(run_err)
        }
    }
}

impl BackendInstance for OnnxInstance {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let staged: Vec<Staged<'_>> = inputs.iter().map(stage).collect::<Result<_, _>>()?;
        let mut values: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for ((spec, tensor), staged) in self.signature.inputs.iter().zip(inputs).zip(&staged) {
            values.push((Cow::Borrowed(spec.name.as_str()), to_value(staged, tensor.shape())?));
        }
        let outputs = self.session.run(values).map_err(run_err)?;
        self.signature
            .outputs
            .iter()
            .map(|spec| {
                let value = outputs.get(&spec.name).ok_or_else(|| BackendError::Run(format!("the model did not produce output '{}'", spec.name)))?;
                from_value(value, spec)
            })
            .collect()
    }
}

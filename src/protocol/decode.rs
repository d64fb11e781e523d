//! What both codecs (JSON/binary and gRPC) share when decoding a request or a response: the errors, the allocation
//! limits, and the checks of datatype names and shapes that come before any tensor memory is allocated.

use crate::tensor::{element_count, DataType, TensorError};
use std::fmt;

/// Limits applied while decoding, so that no request can make Sluice allocate without bound.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Largest element count of one tensor (a request's input, or a remote server's output).
    pub max_elements: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits { max_elements: 64 * 1024 * 1024 }
    }
}

/// Which side of an inference a tensor is on. The same decoder reads a request's inputs (server side) and a response's
/// outputs (the remote backend's client side); its errors say which, so a message never calls an output an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Input,
    Output,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Input => "input",
            Role::Output => "output",
        })
    }
}

/// Why a request or response body could not be decoded. Every variant maps to 400 when it is a client's request that
/// failed; a remote server's bad response is the caller's to report (it is not the client's fault).
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON request: {0}")]
    Json(String),
    #[error("malformed V2 response: {0}")]
    Response(String),
    #[error("invalid Inference-Header-Content-Length: {0}")]
    HeaderLength(String),
    #[error("{role} '{name}': unknown datatype '{datatype}' (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")]
    UnknownDatatype { role: Role, name: String, datatype: String },
    #[error("{role} '{name}': {message}")]
    Data { role: Role, name: String, message: String },
    #[error("{role} '{name}': {source}")]
    Tensor { role: Role, name: String, source: TensorError },
    #[error("{role} '{name}': binary_data_size is {size} but only {left} bytes of binary data remain")]
    BinaryShort { role: Role, name: String, size: usize, left: usize },
    #[error("{bytes} bytes of binary data follow the JSON header but no {role} claims them")]
    BinaryLeftover { role: Role, bytes: usize },
    #[error("{role} '{name}' has neither 'data' nor 'parameters.binary_data_size'")]
    NoData { role: Role, name: String },
    #[error("{role} '{name}' has both 'data' and 'parameters.binary_data_size'")]
    BothData { role: Role, name: String },
    #[error("{role} '{name}': shape {shape:?} holds {count} elements, over the limit of {limit} (server.max_tensor_elements)")]
    TooLarge { role: Role, name: String, shape: Vec<usize>, count: String, limit: usize },
    #[error("parameter '{name}': {message}")]
    Parameter { name: String, message: String },
    #[error("{role} '{name}' appears more than once")]
    Duplicate { role: Role, name: String },
    #[error("output '{0}' is requested more than once")]
    DuplicateOutput(String),
}

/// Parses the V2 datatype name of tensor `name`.
pub fn parse_datatype(role: Role, name: &str, datatype: &str) -> Result<DataType, DecodeError> {
    DataType::from_v2_name(datatype)
        .ok_or_else(|| DecodeError::UnknownDatatype { role, name: name.to_string(), datatype: datatype.to_string() })
}

/// Checks a wire shape (no negative dims, element count within the limit) and returns it with its element count.
pub fn checked_shape(role: Role, name: &str, dims: impl Iterator<Item = i128>, limits: DecodeLimits) -> Result<(Vec<usize>, usize), DecodeError> {
    let shape: Vec<usize> = dims
        .map(|d| {
            usize::try_from(d).map_err(|_| DecodeError::Data {
                role,
                name: name.to_string(),
                message: format!("shape dimension {d} is not a valid size (dimensions must be 0 or more)"),
            })
        })
        .collect::<Result<_, _>>()?;
    match element_count(&shape) {
        Some(count) if count <= limits.max_elements => Ok((shape, count)),
        count => Err(DecodeError::TooLarge {
            role,
            name: name.to_string(),
            count: count.map_or_else(|| "more than 2^64".to_string(), |c| c.to_string()),
            shape,
            limit: limits.max_elements,
        }),
    }
}

/// An integer that does not fit the tensor's integer data type.
#[derive(Debug)]
pub struct OutOfRange;

/// Appends `v` as a little-endian element of the integer data type `dtype` (the one place where wire integers are
/// narrowed). `Ok(false)` means `dtype` is not an integer type; `Err` means `v` does not fit it.
pub fn append_integer(buf: &mut bytes::BytesMut, dtype: DataType, v: i128) -> Result<bool, OutOfRange> {
    macro_rules! int {
        ($t:ty) => {
            buf.extend_from_slice(&<$t>::try_from(v).map_err(|_| OutOfRange)?.to_le_bytes())
        };
    }
    match dtype {
        DataType::U8 => int!(u8),
        DataType::U16 => int!(u16),
        DataType::U32 => int!(u32),
        DataType::U64 => int!(u64),
        DataType::I8 => int!(i8),
        DataType::I16 => int!(i16),
        DataType::I32 => int!(i32),
        DataType::I64 => int!(i64),
        _ => return Ok(false),
    }
    Ok(true)
}

/// The tensor names seen so far in one request, for the duplicate checks: a short list scanned while small (the usual
/// case: a few inputs), a hash set past that, so a body of many thousands of names costs linear time, not quadratic.
#[derive(Default)]
pub struct SeenNames {
    few: Vec<String>,
    many: std::collections::HashSet<String>,
}

impl SeenNames {
    const SCAN_UP_TO: usize = 16;

    /// `true` the first time `name` is seen.
    pub fn first(&mut self, name: &str) -> bool {
        if !self.many.is_empty() {
            return self.many.insert(name.to_owned());
        }
        if self.few.iter().any(|n| n == name) {
            return false;
        }
        self.few.push(name.to_owned());
        if self.few.len() > Self::SCAN_UP_TO {
            self.many.extend(self.few.drain(..));
        }
        true
    }
}

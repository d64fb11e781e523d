//! The one in-memory tensor that travels from decode to encode: a data type, a shape and contiguous little-endian bytes.
//!
//! Bytes are held in a [`Bytes`] so that splitting a batch's outputs back into per-request tensors is slicing, not copying.
//! `BYTES` tensors use the KServe V2 binary layout in memory too (each element is a 4-byte little-endian length followed by
//! that many bytes), so the binary tensor extension can send them without re-encoding.

use bytes::{Bytes, BytesMut};
use std::fmt;

/// The tensor element types of the KServe V2 protocol that ONNX Runtime can also hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bytes,
}

impl DataType {
    /// Every data type, in a fixed order (useful for tests and listings).
    pub const ALL: [DataType; 13] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::Bytes,
    ];

    /// The V2 protocol's name, e.g. `FP32`.
    pub fn v2_name(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// Parses a V2 datatype name (exact, upper case as the protocol spells it).
    pub fn from_v2_name(name: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.v2_name() == name)
    }

    /// Triton's model-configuration name, e.g. `TYPE_FP32` (`TYPE_STRING` for BYTES).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::U8 => "TYPE_UINT8",
            DataType::U16 => "TYPE_UINT16",
            DataType::U32 => "TYPE_UINT32",
            DataType::U64 => "TYPE_UINT64",
            DataType::I8 => "TYPE_INT8",
            DataType::I16 => "TYPE_INT16",
            DataType::I32 => "TYPE_INT32",
            DataType::I64 => "TYPE_INT64",
            DataType::F16 => "TYPE_FP16",
            DataType::F32 => "TYPE_FP32",
            DataType::F64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Size of one element in bytes; `None` for the variable-length `BYTES`.
    pub fn element_size(self) -> Option<usize> {
        match self {
            DataType::Bool | DataType::U8 | DataType::I8 => Some(1),
            DataType::U16 | DataType::I16 | DataType::F16 => Some(2),
            DataType::U32 | DataType::I32 | DataType::F32 => Some(4),
            DataType::U64 | DataType::I64 | DataType::F64 => Some(8),
            DataType::Bytes => None,
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v2_name())
    }
}

/// Why a tensor could not be built, joined or split.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TensorError {
    #[error("shape {shape:?} holds {expected} elements of {dtype} ({expected_bytes} bytes) but {got} bytes were given")]
    ByteLength { dtype: DataType, shape: Vec<usize>, expected: usize, expected_bytes: usize, got: usize },
    #[error("BYTES data is malformed: {0}")]
    MalformedBytes(String),
    #[error("BYTES data holds {got} elements but shape {shape:?} needs {expected}")]
    BytesElementCount { shape: Vec<usize>, expected: usize, got: usize },
    #[error("shape {0:?} has too many elements")]
    ShapeOverflow(Vec<usize>),
    #[error("cannot join tensors: {0}")]
    Concat(String),
    #[error("cannot split tensor: {0}")]
    Split(String),
}

/// Number of elements a shape holds, or `None` on overflow. A scalar (empty shape) holds one.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A dense tensor: data type, shape (no negative dims: it is a value, not a signature) and its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Tensor {
    dtype: DataType,
    shape: Vec<usize>,
    data: Bytes,
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tensor").field("dtype", &self.dtype).field("shape", &self.shape).field("bytes", &self.data.len()).finish()
    }
}

impl Tensor {
    /// Builds a tensor after checking that `data` is exactly what `dtype` and `shape` call for.
    pub fn new(dtype: DataType, shape: Vec<usize>, data: Bytes) -> Result<Tensor, TensorError> {
        let count = element_count(&shape).ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
        match dtype.element_size() {
            Some(size) => {
                let expected_bytes = count.checked_mul(size).ok_or_else(|| TensorError::ShapeOverflow(shape.clone()))?;
                if data.len() != expected_bytes {
                    return Err(TensorError::ByteLength { dtype, shape, expected: count, expected_bytes, got: data.len() });
                }
            }
            None => {
                let got = bytes_element_offsets(&data, None)?.len();
                if got != count {
                    return Err(TensorError::BytesElementCount { shape, expected: count, got });
                }
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Builds a tensor of fixed-size elements from a typed slice (copies; for tests, examples and generated inputs).
    pub fn from_slice<T: bytemuck_lite::Pod>(dtype: DataType, shape: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        Tensor::new(dtype, shape, Bytes::copy_from_slice(bytemuck_lite::as_bytes(values)))
    }

    /// Builds a `BYTES` tensor from its elements.
    pub fn from_byte_strings<S: AsRef<[u8]>>(shape: Vec<usize>, items: &[S]) -> Result<Tensor, TensorError> {
        let mut buf = BytesMut::with_capacity(items.iter().map(|s| 4 + s.as_ref().len()).sum());
        for item in items {
            append_byte_string(&mut buf, item.as_ref())?;
        }
        Tensor::new(DataType::Bytes, shape, buf.freeze())
    }

    pub fn dtype(&self) -> DataType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The raw bytes (V2 binary layout).
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    pub fn element_count(&self) -> usize {
        // Checked at construction.
        element_count(&self.shape).unwrap_or(0)
    }

    /// Size of dim 0 (the batch dimension when the model batches); 1 for a scalar.
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// The elements of a `BYTES` tensor, as slices of its buffer.
    pub fn byte_strings(&self) -> Result<Vec<&[u8]>, TensorError> {
        if self.dtype != DataType::Bytes {
            return Err(TensorError::MalformedBytes(format!("tensor is {}, not BYTES", self.dtype)));
        }
        let offsets = bytes_element_offsets(&self.data, None)?;
        Ok(offsets.into_iter().map(|(start, len)| &self.data[start..start + len]).collect())
    }

    /// Joins tensors along dim 0. All must share dtype and the dims after the first.
    /// A single tensor is returned as is (its bytes are shared, not copied).
    pub fn concat(parts: &[&Tensor]) -> Result<Tensor, TensorError> {
        let first = parts.first().ok_or_else(|| TensorError::Concat("nothing to join".into()))?;
        if parts.len() == 1 {
            return Ok((*first).clone());
        }
        if first.shape.is_empty() {
            return Err(TensorError::Concat("scalars have no dimension to join along".into()));
        }
        let mut rows = 0usize;
        let mut total = 0usize;
        for part in parts {
            if part.dtype != first.dtype {
                return Err(TensorError::Concat(format!("data types differ ({} and {})", first.dtype, part.dtype)));
            }
            if part.shape.len() != first.shape.len() || part.shape[1..] != first.shape[1..] {
                return Err(TensorError::Concat(format!("shapes {:?} and {:?} differ after dim 0", first.shape, part.shape)));
            }
            rows += part.shape[0];
            total += part.data.len();
        }
        let mut buf = BytesMut::with_capacity(total);
        for part in parts {
            buf.extend_from_slice(&part.data);
        }
        let mut shape = first.shape.clone();
        shape[0] = rows;
        Ok(Tensor { dtype: first.dtype, shape, data: buf.freeze() })
    }

    /// Splits along dim 0 into pieces of the given row counts, which must add up to dim 0. Slices, never copies.
    pub fn split(&self, rows: &[usize]) -> Result<Vec<Tensor>, TensorError> {
        let total_rows = self.shape.first().copied().ok_or_else(|| TensorError::Split("a scalar has no rows".into()))?;
        let wanted: usize = rows.iter().sum();
        if wanted != total_rows {
            return Err(TensorError::Split(format!("pieces add up to {wanted} rows but the tensor has {total_rows}")));
        }
        if rows.len() == 1 {
            return Ok(vec![self.clone()]);
        }
        let row_elements = element_count(&self.shape[1..]).ok_or_else(|| TensorError::ShapeOverflow(self.shape.clone()))?;
        let byte_bounds: Vec<usize> = match self.dtype.element_size() {
            Some(size) => {
                let row_bytes = row_elements * size;
                let mut bounds = Vec::with_capacity(rows.len() + 1);
                let mut at = 0;
                bounds.push(0);
                for r in rows {
                    at += r * row_bytes;
                    bounds.push(at);
                }
                bounds
            }
            None => {
                let offsets = bytes_element_offsets(&self.data, None)?;
                let mut bounds = Vec::with_capacity(rows.len() + 1);
                let mut element = 0usize;
                bounds.push(0);
                for r in rows {
                    element += r * row_elements;
                    // Start of the next element's length prefix, or the end of the buffer.
                    bounds.push(offsets.get(element).map(|(start, _)| start - 4).unwrap_or(self.data.len()));
                }
                bounds
            }
        };
        Ok(rows
            .iter()
            .zip(byte_bounds.windows(2))
            .map(|(&r, w)| {
                let mut shape = self.shape.clone();
                shape[0] = r;
                Tensor { dtype: self.dtype, shape, data: self.data.slice(w[0]..w[1]) }
            })
            .collect())
    }
}

/// Appends one element in the V2 `BYTES` layout.
pub fn append_byte_string(buf: &mut BytesMut, item: &[u8]) -> Result<(), TensorError> {
    let len = u32::try_from(item.len()).map_err(|_| TensorError::MalformedBytes("an element is longer than 4 GiB".into()))?;
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(item);
    Ok(())
}

/// Walks a V2 `BYTES` buffer and returns (start, length) of each element's payload.
/// With `limit`, stops with an error once more than `limit` elements are seen (guards against huge counts).
pub fn bytes_element_offsets(data: &[u8], limit: Option<usize>) -> Result<Vec<(usize, usize)>, TensorError> {
    let mut offsets = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let header = data
            .get(at..at + 4)
            .ok_or_else(|| TensorError::MalformedBytes(format!("truncated length prefix at byte {at}")))?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let start = at + 4;
        let end = start
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| TensorError::MalformedBytes(format!("element at byte {at} claims {len} bytes past the end of the data")))?;
        offsets.push((start, len));
        if let Some(limit) = limit {
            if offsets.len() > limit {
                return Err(TensorError::MalformedBytes(format!("more than {limit} elements")));
            }
        }
        at = end;
    }
    Ok(offsets)
}

/// A tiny, dependency-free stand-in for `bytemuck`: viewing plain numeric slices as bytes.
pub mod bytemuck_lite {
    /// Plain old data: every bit pattern is valid and there is no padding.
    ///
    /// # Safety
    /// Implement only for types with no padding and no invalid bit patterns.
    pub unsafe trait Pod: Copy + 'static {}
    macro_rules! pod {
        ($($t:ty),*) => { $(unsafe impl Pod for $t {})* };
    }
    pod!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64, half::f16);

    /// Views a slice of plain numbers as its bytes (native endianness; Sluice targets little-endian hosts).
    pub fn as_bytes<T: Pod>(values: &[T]) -> &[u8] {
        // SAFETY: T is Pod (no padding), the pointer and length come from a valid slice.
        unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_checks_byte_length() {
        let err = Tensor::new(DataType::F32, vec![2, 3], Bytes::from(vec![0u8; 20])).unwrap_err();
        assert!(matches!(err, TensorError::ByteLength { expected_bytes: 24, got: 20, .. }), "{err}");
    }

    #[test]
    fn bytes_layout_round_trips() {
        let t = Tensor::from_byte_strings(vec![3], &["a", "", "héllo"]).unwrap();
        assert_eq!(t.byte_strings().unwrap(), vec![&b"a"[..], b"", "héllo".as_bytes()]);
        let err = Tensor::new(DataType::Bytes, vec![4], t.data().clone()).unwrap_err();
        assert!(matches!(err, TensorError::BytesElementCount { expected: 4, got: 3, .. }));
        let truncated = t.data().slice(0..t.data().len() - 1);
        assert!(matches!(Tensor::new(DataType::Bytes, vec![3], truncated), Err(TensorError::MalformedBytes(_))));
    }

    #[test]
    fn concat_rejects_mismatches() {
        let a = Tensor::from_slice(DataType::F32, vec![1, 2], &[1f32, 2.0]).unwrap();
        let b = Tensor::from_slice(DataType::F32, vec![1, 3], &[1f32, 2.0, 3.0]).unwrap();
        let c = Tensor::from_slice(DataType::I32, vec![1, 2], &[1i32, 2]).unwrap();
        assert!(Tensor::concat(&[&a, &b]).is_err());
        assert!(Tensor::concat(&[&a, &c]).is_err());
        assert!(a.split(&[2]).is_err());
    }
}

//! The byte format of a cached answer in Redis: a list of named tensors, versioned, little-endian, self-checking.
//!
//! ```text
//! magic "SLC" | format 1 | count u32 | per tensor: name (u32 len + UTF-8) | datatype (u8 len + V2 name)
//!             | ndim u8 | dims u64 × ndim | data (u64 len + bytes)
//! ```
//!
//! The datatype is stored by its V2 name, not an enum index, so the format does not depend on declaration order.
//! Whatever is read back is untrusted (another version of Sluice, another program, a corrupted value): decoding checks
//! every length against what is left before allocating, bounds the counts, and validates each tensor through
//! [`Tensor::new`]; a bad entry is an error, never a panic.

use crate::protocol::NamedTensor;
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;

const MAGIC: &[u8; 3] = b"SLC";
const FORMAT: u8 = 1;
/// More outputs or dimensions than any model has: a value claiming more is corrupt.
const MAX_TENSORS: u32 = 4096;
const MAX_DIMS: u8 = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("not a Sluice cache entry (bad magic)")]
    Magic,
    #[error("cache entry format {0} is not known (this Sluice reads format {FORMAT})")]
    Format(u8),
    #[error("cache entry is truncated")]
    Truncated,
    #[error("cache entry is corrupt: {0}")]
    Corrupt(String),
}

/// Encodes the outputs of one answer.
pub fn encode(outputs: &[NamedTensor]) -> Vec<u8> {
    let size: usize = outputs.iter().map(|o| 4 + o.name.len() + 1 + 8 + 1 + o.tensor.shape().len() * 8 + 8 + o.tensor.data().len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&(outputs.len() as u32).to_le_bytes());
    for o in outputs {
        out.extend_from_slice(&(o.name.len() as u32).to_le_bytes());
        out.extend_from_slice(o.name.as_bytes());
        let dtype = o.tensor.dtype().v2_name();
        out.push(dtype.len() as u8);
        out.extend_from_slice(dtype.as_bytes());
        out.push(o.tensor.shape().len() as u8);
        for &d in o.tensor.shape() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(o.tensor.data().len() as u64).to_le_bytes());
        out.extend_from_slice(o.tensor.data());
    }
    out
}

/// A cursor over untrusted bytes.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.data.len() {
            return Err(CodecError::Truncated);
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    /// A length read from the input, checked against what is left before anything is allocated for it.
    fn len(&mut self, n: u64) -> Result<usize, CodecError> {
        usize::try_from(n).ok().filter(|&n| n <= self.data.len()).ok_or(CodecError::Truncated)
    }
}

/// Decodes an entry written by [`encode`]. `data` is shared: tensors slice it instead of copying.
pub fn decode(data: &Bytes) -> Result<Vec<NamedTensor>, CodecError> {
    let mut r = Reader { data };
    if r.take(3).map_err(|_| CodecError::Magic)? != MAGIC {
        return Err(CodecError::Magic);
    }
    let format = r.u8()?;
    if format != FORMAT {
        return Err(CodecError::Format(format));
    }
    let count = r.u32()?;
    if count > MAX_TENSORS {
        return Err(CodecError::Corrupt(format!("{count} tensors")));
    }
    let mut outputs = Vec::with_capacity((count as usize).min(64));
    for _ in 0..count {
        let n = r.u32()?;
        let n = r.len(u64::from(n))?;
        let name = std::str::from_utf8(r.take(n)?).map_err(|_| CodecError::Corrupt("a name is not UTF-8".into()))?.to_string();
        let n = r.u8()?;
        let dtype_name = std::str::from_utf8(r.take(usize::from(n))?).map_err(|_| CodecError::Corrupt("a datatype is not UTF-8".into()))?;
        let dtype = DataType::from_v2_name(dtype_name).ok_or_else(|| CodecError::Corrupt(format!("unknown datatype '{dtype_name}'")))?;
        let ndim = r.u8()?;
        if ndim > MAX_DIMS {
            return Err(CodecError::Corrupt(format!("{ndim} dimensions")));
        }
        let mut shape = Vec::with_capacity(usize::from(ndim));
        for _ in 0..ndim {
            let d = r.u64()?;
            shape.push(usize::try_from(d).map_err(|_| CodecError::Corrupt(format!("dimension {d}")))?);
        }
        let n = r.u64()?;
        let n = r.len(n)?;
        let start = data.len() - r.data.len();
        r.take(n)?;
        let tensor = Tensor::new(dtype, shape, data.slice(start..start + n)).map_err(|e| CodecError::Corrupt(format!("tensor '{name}': {e}")))?;
        outputs.push(NamedTensor { name, tensor });
    }
    if !r.data.is_empty() {
        return Err(CodecError::Corrupt(format!("{} bytes after the last tensor", r.data.len())));
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for (i, dtype) in DataType::ALL.iter().enumerate() {
            let tensor = match dtype {
                DataType::Bytes => Tensor::from_byte_strings(vec![2, 1], &[b"ab".as_slice(), b"".as_slice()]).unwrap(),
                d => {
                    let size = d.element_size().unwrap();
                    Tensor::new(*d, vec![2, 3], Bytes::from((0..6 * size).map(|b| (b + i) as u8 % 2).collect::<Vec<_>>())).unwrap()
                }
            };
            out.push(NamedTensor { name: format!("out_{}", dtype.v2_name()), tensor });
        }
        out.push(NamedTensor { name: "empty".into(), tensor: Tensor::new(DataType::F32, vec![0, 4], Bytes::new()).unwrap() });
        out
    }

    #[test]
    fn round_trip_of_every_datatype_and_empty_tensors() {
        let outputs = sample();
        let decoded = decode(&Bytes::from(encode(&outputs))).unwrap();
        assert_eq!(decoded, outputs);
        assert_eq!(decode(&Bytes::from(encode(&[]))).unwrap(), vec![]);
    }

    #[test]
    fn every_truncation_and_bad_header_is_an_error() {
        let bytes = encode(&sample());
        for n in 0..bytes.len() {
            assert!(decode(&Bytes::copy_from_slice(&bytes[..n])).is_err(), "truncated at {n} decoded");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(decode(&Bytes::from(bad)), Err(CodecError::Magic));
        let mut newer = bytes.clone();
        newer[3] = 9;
        assert_eq!(decode(&Bytes::from(newer)), Err(CodecError::Format(9)));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(decode(&Bytes::from(longer)), Err(CodecError::Corrupt(_))));
    }

    #[test]
    fn huge_claimed_lengths_do_not_allocate() {
        let mut b = Vec::from(*MAGIC);
        b.push(FORMAT);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes()); // a 4 GiB name in a 12-byte value
        assert_eq!(decode(&Bytes::from(b)), Err(CodecError::Truncated));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), keep_header in any::<bool>()) {
            let mut data = data;
            if keep_header && data.len() >= 4 {
                data[..3].copy_from_slice(MAGIC);
                data[3] = FORMAT;
            }
            let _ = decode(&Bytes::from(data));
        }
    }
}

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
//! [`Tensor::new`]; a bad entry is an error, never a panic. Encoding refuses what decoding would refuse (more tensors
//! or dimensions than the bounds), so every entry Sluice writes can be read back.

use crate::protocol::NamedTensor;
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;

const MAGIC: &[u8; 3] = b"SLC";
const FORMAT: u8 = 1;
/// More outputs or dimensions than any model has: a value claiming more is corrupt (and such an answer is not stored).
pub const MAX_TENSORS: u32 = 4096;
pub const MAX_DIMS: u8 = 32;

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
    /// Only from [`encode`]: the answer is outside the format's bounds, so it is not stored.
    #[error("answer cannot be stored in a cache entry: {0}")]
    TooLarge(String),
}

/// Encodes the outputs of one answer; an error when they are outside the bounds [`decode`] accepts (more than
/// [`MAX_TENSORS`] outputs, more than [`MAX_DIMS`] dimensions, a name over 4 GiB), instead of writing an entry that
/// could never be read back.
pub fn encode(outputs: &[NamedTensor]) -> Result<Vec<u8>, CodecError> {
    let count = u32::try_from(outputs.len()).ok().filter(|&n| n <= MAX_TENSORS).ok_or_else(|| CodecError::TooLarge(format!("{} outputs", outputs.len())))?;
    let size: usize = outputs.iter().map(|o| 4 + o.name.len() + 1 + 8 + 1 + o.tensor.shape().len() * 8 + 8 + o.tensor.data().len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    out.extend_from_slice(&count.to_le_bytes());
    for o in outputs {
        let name_len = u32::try_from(o.name.len()).map_err(|_| CodecError::TooLarge(format!("an output name of {} bytes", o.name.len())))?;
        let ndim = u8::try_from(o.tensor.shape().len())
            .ok()
            .filter(|&n| n <= MAX_DIMS)
            .ok_or_else(|| CodecError::TooLarge(format!("output '{}' has {} dimensions", o.name, o.tensor.shape().len())))?;
        out.extend_from_slice(&name_len.to_le_bytes());
        out.extend_from_slice(o.name.as_bytes());
        // V2 names are short ASCII constants ("FP32", "BYTES"): their length fits the u8.
        let dtype = o.tensor.dtype().v2_name();
        out.push(dtype.len() as u8);
        out.extend_from_slice(dtype.as_bytes());
        out.push(ndim);
        for &d in o.tensor.shape() {
            out.extend_from_slice(&(d as u64).to_le_bytes());
        }
        out.extend_from_slice(&(o.tensor.data().len() as u64).to_le_bytes());
        out.extend_from_slice(o.tensor.data());
    }
    Ok(out)
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
        // Zero rows of every datatype, a scalar, and a name that is not ASCII.
        for dtype in DataType::ALL {
            out.push(NamedTensor { name: format!("empty_{}", dtype.v2_name()), tensor: Tensor::new(dtype, vec![0, 4], Bytes::new()).unwrap() });
        }
        out.push(NamedTensor { name: "scalar".into(), tensor: Tensor::from_slice(DataType::F64, vec![], &[2.5f64]).unwrap() });
        out.push(NamedTensor { name: "ünïcode/名前".into(), tensor: Tensor::from_byte_strings(vec![1], &["\u{0}\u{ff}"]).unwrap() });
        out
    }

    fn round_trip(outputs: &[NamedTensor]) -> Vec<NamedTensor> {
        decode(&Bytes::from(encode(outputs).unwrap())).unwrap()
    }

    #[test]
    fn round_trip_of_every_datatype_and_empty_tensors() {
        let outputs = sample();
        let decoded = round_trip(&outputs);
        assert_eq!(decoded, outputs);
        for (d, o) in decoded.iter().zip(&outputs) {
            // Byte-identical, not just equal values.
            assert_eq!((d.tensor.dtype(), d.tensor.shape(), d.tensor.data().as_ref()), (o.tensor.dtype(), o.tensor.shape(), o.tensor.data().as_ref()));
        }
        assert_eq!(round_trip(&[]), vec![]);
    }

    #[test]
    fn the_layout_is_the_documented_one() {
        let t = NamedTensor { name: "y".into(), tensor: Tensor::from_slice(DataType::I16, vec![2], &[1i16, -1]).unwrap() };
        let mut expected = b"SLC\x01".to_vec();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(b"y");
        expected.extend_from_slice(b"\x05INT16\x01");
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&4u64.to_le_bytes());
        expected.extend_from_slice(&[1, 0, 0xff, 0xff]);
        assert_eq!(encode(&[t]).unwrap(), expected);
    }

    #[test]
    fn every_truncation_and_bad_header_is_an_error() {
        let bytes = encode(&sample()).unwrap();
        for n in 0..bytes.len() {
            assert!(decode(&Bytes::copy_from_slice(&bytes[..n])).is_err(), "truncated at {n} decoded");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert_eq!(decode(&Bytes::from(bad)), Err(CodecError::Magic));
        assert_eq!(decode(&Bytes::from_static(b"SL")), Err(CodecError::Magic));
        let mut newer = bytes.clone();
        newer[3] = 9;
        assert_eq!(decode(&Bytes::from(newer)), Err(CodecError::Format(9)));
        let mut longer = bytes;
        longer.push(0);
        assert!(matches!(decode(&Bytes::from(longer)), Err(CodecError::Corrupt(_))));
    }

    /// A header followed by one tensor's fields up to its datatype.
    fn one_tensor(dtype: &[u8]) -> Vec<u8> {
        let mut b = Vec::from(*MAGIC);
        b.push(FORMAT);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.push(b'x');
        b.push(dtype.len() as u8);
        b.extend_from_slice(dtype);
        b
    }

    #[test]
    fn huge_claimed_lengths_and_counts_do_not_allocate() {
        let mut b = Vec::from(*MAGIC);
        b.push(FORMAT);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes()); // a 4 GiB name in a 12-byte value
        assert_eq!(decode(&Bytes::from(b)), Err(CodecError::Truncated));

        let mut b = Vec::from(*MAGIC);
        b.push(FORMAT);
        b.extend_from_slice(&(MAX_TENSORS + 1).to_le_bytes());
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(_))));

        let mut b = one_tensor(b"FP32");
        b.push(MAX_DIMS + 1);
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(_))));

        // 2^64 - 1 bytes of data claimed.
        let mut b = one_tensor(b"UINT8");
        b.push(1);
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&Bytes::from(b)), Err(CodecError::Truncated));
    }

    #[test]
    fn inconsistent_tensors_are_corrupt() {
        // An unknown datatype.
        let mut b = one_tensor(b"FP128");
        b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(m)) if m.contains("FP128")));
        // 2 × 3 FP32 elements with 4 bytes of data.
        let mut b = one_tensor(b"FP32");
        b.push(2);
        b.extend_from_slice(&2u64.to_le_bytes());
        b.extend_from_slice(&3u64.to_le_bytes());
        b.extend_from_slice(&4u64.to_le_bytes());
        b.extend_from_slice(&[0; 4]);
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(m)) if m.contains("'x'")));
        // A shape whose element count overflows, with no data.
        let mut b = one_tensor(b"INT8");
        b.push(2);
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&u64::MAX.to_le_bytes());
        b.extend_from_slice(&0u64.to_le_bytes());
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(_))));
        // BYTES whose length prefix runs past the data.
        let mut b = one_tensor(b"BYTES");
        b.push(1);
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(&[9, 0, 0, 0, b'a']);
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(_))));
        // A name that is not UTF-8.
        let mut b = one_tensor(b"INT8");
        b[12] = 0xff;
        assert!(matches!(decode(&Bytes::from(b)), Err(CodecError::Corrupt(m)) if m.contains("UTF-8")));
    }

    #[test]
    fn what_decode_would_refuse_is_not_encoded() {
        let deep = Tensor::new(DataType::U8, vec![1; usize::from(MAX_DIMS) + 1], Bytes::from_static(b"x")).unwrap();
        assert!(matches!(encode(&[NamedTensor { name: "deep".into(), tensor: deep.clone() }]), Err(CodecError::TooLarge(m)) if m.contains("deep")));
        let ok = Tensor::new(DataType::U8, vec![1; usize::from(MAX_DIMS)], Bytes::from_static(b"x")).unwrap();
        round_trip(&[NamedTensor { name: "ok".into(), tensor: ok }]);
        let empty = Tensor::new(DataType::U8, vec![0], Bytes::new()).unwrap();
        let many: Vec<NamedTensor> = (0..=MAX_TENSORS).map(|i| NamedTensor { name: i.to_string(), tensor: empty.clone() }).collect();
        assert!(matches!(encode(&many), Err(CodecError::TooLarge(_))));
        assert_eq!(round_trip(&many[1..]).len(), MAX_TENSORS as usize);
    }

    fn arb_tensor() -> impl Strategy<Value = NamedTensor> {
        let dtype = proptest::sample::select(DataType::ALL.to_vec());
        let shape = proptest::collection::vec(0usize..4, 0..4);
        ("[a-z_]{0,12}", dtype, shape, any::<u64>()).prop_map(|(name, dtype, shape, seed)| {
            let count: usize = shape.iter().product();
            let tensor = match dtype.element_size() {
                Some(size) => {
                    let data: Vec<u8> = (0..count * size).map(|i| (seed.rotate_left(i as u32 % 64) as u8) ^ i as u8).collect();
                    Tensor::new(dtype, shape, Bytes::from(data)).unwrap()
                }
                None => {
                    let items: Vec<Vec<u8>> = (0..count).map(|i| vec![seed as u8; (seed as usize + i) % 5]).collect();
                    Tensor::from_byte_strings(shape, &items).unwrap()
                }
            };
            NamedTensor { name, tensor }
        })
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

        #[test]
        fn any_answer_round_trips(outputs in proptest::collection::vec(arb_tensor(), 0..5)) {
            prop_assert_eq!(round_trip(&outputs), outputs);
        }

        /// Damage to a valid entry (the likelier corruption than random bytes: every header is right) is an error
        /// or a valid decoding, never a panic.
        #[test]
        fn damaged_entries_never_panic(
            outputs in proptest::collection::vec(arb_tensor(), 1..4),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        ) {
            let mut bytes = encode(&outputs).unwrap();
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] = value;
            }
            let _ = decode(&Bytes::from(bytes));
        }
    }
}

//! The cache key: a BLAKE3 hash over everything that decides a response's outputs, and nothing that only decides how
//! they are encoded (JSON or binary, HTTP or gRPC), so one entry answers every protocol.
//!
//! Hashed, in this order, each variable-length field preceded by its length so that no two different requests can
//! produce the same byte stream: a domain tag with the key format's version; the model name; the resolved version
//! number; the model file's own BLAKE3 hash (a replaced file under the same version number never reuses entries);
//! every input in the model's declared order (name, datatype, shape, bytes); and the outputs the answer holds, in its
//! order (the request's selection resolved against the model: naming every output in the model's order and naming
//! none are the same answer, and the same key). Priority, timeouts and encoding choices are left out: they change when
//! or how an answer is sent, not what it is.

use crate::tensor::{DataType, Tensor};
use std::fmt;

/// Bumped whenever what goes into the key changes, so entries written by an older Sluice (in a shared Redis) are
/// never read as current ones.
const DOMAIN: &[u8] = b"sluice-response-cache-v1";

/// A 256-bit key. Equal keys mean equal outputs (up to a BLAKE3 collision).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey(pub [u8; 32]);

impl CacheKey {
    /// Lowercase hex, for Redis keys and logs.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
            out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
        }
        out
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.to_hex()[..16])
    }
}

/// What identifies the model a request ran on.
pub struct ModelIdentity<'a> {
    pub name: &'a str,
    pub version: u64,
    /// BLAKE3 of the model file.
    pub fingerprint: &'a [u8; 32],
}

/// Builds a key field by field (see the module docs for the order).
pub struct KeyBuilder(blake3::Hasher);

impl KeyBuilder {
    pub fn new(model: &ModelIdentity<'_>) -> KeyBuilder {
        let mut h = blake3::Hasher::new();
        h.update(DOMAIN);
        let mut b = KeyBuilder(h);
        b.bytes(model.name.as_bytes());
        b.0.update(&model.version.to_le_bytes());
        b.0.update(model.fingerprint);
        b
    }

    fn bytes(&mut self, data: &[u8]) {
        self.0.update(&(data.len() as u64).to_le_bytes());
        self.0.update(data);
    }

    /// Adds the inputs, named and in the model's declared order.
    pub fn inputs<'t>(mut self, inputs: impl IntoIterator<Item = (&'t str, &'t Tensor)>) -> KeyBuilder {
        let mut count = 0u64;
        for (name, tensor) in inputs {
            count += 1;
            self.bytes(name.as_bytes());
            self.bytes(dtype_tag(tensor.dtype()).as_bytes());
            self.0.update(&(tensor.shape().len() as u64).to_le_bytes());
            for &dim in tensor.shape() {
                self.0.update(&(dim as u64).to_le_bytes());
            }
            self.bytes(tensor.data());
        }
        // Closing count: "inputs (a, b) then outputs ()" and "inputs (a) then outputs (b...)" differ.
        self.0.update(&count.to_le_bytes());
        self
    }

    /// Adds the names of the outputs the answer holds, in its order.
    pub fn outputs<'o>(mut self, names: impl IntoIterator<Item = &'o str>) -> KeyBuilder {
        let mut count = 0u64;
        for name in names {
            count += 1;
            self.bytes(name.as_bytes());
        }
        self.0.update(&count.to_le_bytes());
        self
    }

    pub fn finish(self) -> CacheKey {
        CacheKey(*self.0.finalize().as_bytes())
    }
}

fn dtype_tag(dtype: DataType) -> &'static str {
    dtype.v2_name()
}

/// BLAKE3 of a file, read in chunks (model files can be large).
pub fn file_fingerprint(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(*hasher.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: [u8; 32] = [7; 32];

    fn key(model: &str, version: u64, fingerprint: &[u8; 32], inputs: &[(&str, &Tensor)], outputs: &[&str]) -> CacheKey {
        KeyBuilder::new(&ModelIdentity { name: model, version, fingerprint })
            .inputs(inputs.iter().map(|(n, t)| (*n, *t)))
            .outputs(outputs.iter().copied())
            .finish()
    }

    fn f32s(shape: Vec<usize>, values: &[f32]) -> Tensor {
        Tensor::from_slice(DataType::F32, shape, values).unwrap()
    }

    #[test]
    fn same_request_same_key_and_hex_form() {
        let t = f32s(vec![1, 2], &[1.0, 2.0]);
        let a = key("m", 1, &FP, &[("x", &t)], &[]);
        let b = key("m", 1, &FP, &[("x", &t.clone())], &[]);
        assert_eq!(a, b);
        assert_eq!(a.to_hex().len(), 64);
        assert!(a.to_hex().chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn model_version_and_file_are_part_of_the_key() {
        let t = f32s(vec![1, 2], &[1.0, 2.0]);
        let base = key("m", 1, &FP, &[("x", &t)], &[]);
        assert_ne!(base, key("n", 1, &FP, &[("x", &t)], &[]));
        assert_ne!(base, key("m", 2, &FP, &[("x", &t)], &[]));
        assert_ne!(base, key("m", 1, &[8; 32], &[("x", &t)], &[]));
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        // The same concatenated bytes split differently between name and data, or between inputs and outputs.
        let a = Tensor::new(DataType::U8, vec![2], bytes::Bytes::from_static(b"bc")).unwrap();
        let b = Tensor::new(DataType::U8, vec![1], bytes::Bytes::from_static(b"c")).unwrap();
        assert_ne!(key("m", 1, &FP, &[("a", &a)], &[]), key("m", 1, &FP, &[("ab", &b)], &[]));
        assert_ne!(key("m", 1, &FP, &[("a", &a)], &["o"]), key("m", 1, &FP, &[("a", &a), ("o", &b)], &[]));
    }

    fn dtype_strategy() -> impl Strategy<Value = DataType> {
        prop_oneof![Just(DataType::U8), Just(DataType::I8), Just(DataType::Bool)]
    }

    proptest! {
        /// Any one change - a byte, a dimension, the datatype, the output selection - gives another key.
        #[test]
        fn every_difference_changes_the_key(
            data in proptest::collection::vec(0u8..2, 1..64),
            flip in any::<prop::sample::Index>(),
            dtype in dtype_strategy(),
            other_dtype in dtype_strategy(),
            outputs in proptest::collection::vec("[a-c]{1,2}", 0..3),
            other_outputs in proptest::collection::vec("[a-c]{1,2}", 0..3),
        ) {
            let n = data.len();
            let t = Tensor::new(dtype, vec![n], bytes::Bytes::from(data.clone())).unwrap();
            let outs: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let base = key("m", 1, &FP, &[("x", &t)], &outs);

            let mut changed = data.clone();
            let i = flip.index(n);
            changed[i] ^= 1;
            let one_byte = Tensor::new(dtype, vec![n], bytes::Bytes::from(changed)).unwrap();
            prop_assert_ne!(base, key("m", 1, &FP, &[("x", &one_byte)], &outs));

            if n % 2 == 0 {
                let reshaped = Tensor::new(dtype, vec![n / 2, 2], bytes::Bytes::from(data.clone())).unwrap();
                prop_assert_ne!(base, key("m", 1, &FP, &[("x", &reshaped)], &outs));
            }
            if other_dtype != dtype {
                let retyped = Tensor::new(other_dtype, vec![n], bytes::Bytes::from(data.clone())).unwrap();
                prop_assert_ne!(base, key("m", 1, &FP, &[("x", &retyped)], &outs));
            }
            let other: Vec<&str> = other_outputs.iter().map(String::as_str).collect();
            if other != outs {
                prop_assert_ne!(base, key("m", 1, &FP, &[("x", &t)], &other));
            }
        }
    }
}

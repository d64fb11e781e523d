//! Fast paths for the bulk of a JSON request or response: numeric `data` arrays.
//!
//! Decoding: a strict scanner over the raw `data` text that accepts only brackets, commas, whitespace and numbers, and
//! parses numbers straight into the tensor's type. Anything else (booleans, strings, nulls, fractions in integer data,
//! malformed structure) returns `None`, and the caller falls back to the serde path, which produces the precise error.
//! Encoding: numbers are written with `ryu`/`itoa` into the output buffer, without serde's per-element machinery.

use super::decode::append_integer;
use crate::tensor::{DataType, Tensor};
use bytes::BytesMut;

/// Parses a flat or nested numeric array (or a single number) of `dtype` into little-endian bytes.
/// `None` means "not handled here": the caller must use the general decoder.
pub fn decode_numbers(text: &str, dtype: DataType, expected: usize) -> Option<BytesMut> {
    let size = dtype.element_size()?;
    if dtype == DataType::Bool {
        return None;
    }
    let bytes = text.as_bytes();
    // Every element takes at least one character of text: a tiny body cannot make this allocate for a huge shape.
    let mut out = BytesMut::with_capacity(expected.min(text.len()) * size);
    let mut count = 0usize;
    let mut depth = 0usize;
    // true when a value (number or closed array) may come next, i.e. after '[' or ','.
    let mut want_value = true;
    // true right after '[' (so ']' may close an empty array).
    let mut just_opened = false;
    let mut i = 0usize;
    let mut seen_top = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b'[' => {
                if !want_value || (depth == 0 && seen_top) {
                    return None;
                }
                depth += 1;
                seen_top = true;
                just_opened = true;
                i += 1;
            }
            b']' => {
                if depth == 0 || (want_value && !just_opened) {
                    return None;
                }
                depth -= 1;
                want_value = false;
                just_opened = false;
                i += 1;
            }
            b',' => {
                if want_value || depth == 0 {
                    return None;
                }
                want_value = true;
                just_opened = false;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                if !want_value || (depth == 0 && seen_top) {
                    return None;
                }
                seen_top = true;
                let used = push_number(&bytes[i..], dtype, &mut out)?;
                count += 1;
                if count > expected {
                    return None;
                }
                i += used;
                want_value = false;
                just_opened = false;
            }
            _ => return None,
        }
    }
    (depth == 0 && seen_top && count == expected).then_some(out)
}

/// Parses one number at the start of `s` as `dtype`, appends it, and returns the bytes consumed.
fn push_number(s: &[u8], dtype: DataType, out: &mut BytesMut) -> Option<usize> {
    match dtype {
        DataType::F32 => {
            let (v, n) = fast_float2::parse_partial::<f32, _>(s).ok()?;
            // JSON has no infinity: an infinite result means out of range, which the general path reports.
            if v.is_infinite() {
                return None;
            }
            out.extend_from_slice(&v.to_le_bytes());
            Some(n)
        }
        DataType::F64 => {
            let (v, n) = fast_float2::parse_partial::<f64, _>(s).ok()?;
            if v.is_infinite() {
                return None;
            }
            out.extend_from_slice(&v.to_le_bytes());
            Some(n)
        }
        DataType::F16 => {
            let (v, n) = fast_float2::parse_partial::<f64, _>(s).ok()?;
            let h = half::f16::from_f64(v);
            if h.is_infinite() {
                return None;
            }
            out.extend_from_slice(&h.to_le_bytes());
            Some(n)
        }
        _ => {
            let (v, n) = parse_integer(s)?;
            // Out of range or not an integer type: the general path says which.
            append_integer(out, dtype, v).ok().filter(|&appended| appended)?;
            Some(n)
        }
    }
}

/// A JSON integer (no fraction or exponent) at the start of `s`.
fn parse_integer(s: &[u8]) -> Option<(i128, usize)> {
    let (negative, start) = if s.first() == Some(&b'-') { (true, 1) } else { (false, 0) };
    let mut value: i128 = 0;
    let mut i = start;
    while let Some(&d) = s.get(i).filter(|d| d.is_ascii_digit()) {
        value = value.checked_mul(10)?.checked_add((d - b'0') as i128)?;
        i += 1;
        if i - start > 20 {
            return None;
        }
    }
    if i == start || matches!(s.get(i), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((if negative { -value } else { value }, i))
}

/// Writes a tensor's elements as a flat JSON array.
pub fn write_data(out: &mut Vec<u8>, t: &Tensor) -> Result<(), serde_json::Error> {
    let data = t.data();
    let mut first = true;
    out.push(b'[');
    let mut sep = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
        }
        first = false;
    };
    let mut float_buf = ryu::Buffer::new();
    let mut int_buf = itoa::Buffer::new();
    macro_rules! ints {
        ($t:ty) => {
            for chunk in data.chunks_exact(std::mem::size_of::<$t>()) {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(chunk);
                sep(out);
                out.extend_from_slice(int_buf.format(<$t>::from_le_bytes(raw)).as_bytes());
            }
        };
    }
    macro_rules! floats {
        ($t:ty, $conv:expr) => {
            for chunk in data.chunks_exact(std::mem::size_of::<$t>()) {
                let mut raw = [0u8; std::mem::size_of::<$t>()];
                raw.copy_from_slice(chunk);
                let v = $conv(<$t>::from_le_bytes(raw));
                sep(out);
                // JSON has no NaN or infinity: they are written as null, as serde_json does.
                if v.is_finite() {
                    out.extend_from_slice(float_buf.format_finite(v).as_bytes());
                } else {
                    out.extend_from_slice(b"null");
                }
            }
        };
    }
    match t.dtype() {
        DataType::Bool => {
            for &b in data.iter() {
                sep(out);
                out.extend_from_slice(if b != 0 { b"true" } else { b"false" });
            }
        }
        DataType::U8 => ints!(u8),
        DataType::U16 => ints!(u16),
        DataType::U32 => ints!(u32),
        DataType::U64 => ints!(u64),
        DataType::I8 => ints!(i8),
        DataType::I16 => ints!(i16),
        DataType::I32 => ints!(i32),
        DataType::I64 => ints!(i64),
        DataType::F16 => floats!(u16, |bits| half::f16::from_bits(bits).to_f32()),
        DataType::F32 => floats!(f32, |v| v),
        DataType::F64 => floats!(f64, |v| v),
        DataType::Bytes => {
            for item in t.byte_strings().map_err(serde::ser::Error::custom)? {
                sep(out);
                serde_json::to_writer(&mut *out, &String::from_utf8_lossy(item))?;
            }
        }
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_only_well_formed_numeric_arrays() {
        assert_eq!(decode_numbers("[[1, 2], [3, 4]]", DataType::I32, 4).map(|b| b.len()), Some(16));
        assert_eq!(decode_numbers(" 7 ", DataType::I64, 1).map(|b| b.len()), Some(8));
        assert!(decode_numbers("[1.5e3,-2]", DataType::F32, 2).is_some());
        for bad in ["[1,,2]", "[1 2]", "[1,2", "1,2", "[1,2]]", "[[1],2", "[1.5]", "[true]", "[\"a\"]", "[null]", "[]2", "[1,]"] {
            assert!(decode_numbers(bad, DataType::I32, 2).is_none(), "{bad}");
        }
        assert!(decode_numbers("[300]", DataType::I8, 1).is_none());
        assert!(decode_numbers("[1,2,3]", DataType::F32, 2).is_none());
    }
}

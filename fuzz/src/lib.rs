//! What the fuzz targets share: the decode limits, how a fuzz input becomes an HTTP body with an optional
//! `Inference-Header-Content-Length`, and the round-trip checks run on every input that decodes.
//!
//! A target fails on a panic (including a failed round-trip assertion), an abort, a leak or over-allocation
//! (`-rss_limit_mb`, `-malloc_limit_mb`) and a slow input (`-timeout`): see scripts/fuzz.sh.

use bytes::Bytes;

/// Small on purpose: a tensor of up to 2^20 elements is at most 8 MiB, so the fuzzer never allocates a lot for an
/// input the decoders rightly accept, and any large allocation it reports is a real finding.
pub const LIMITS: sluice::protocol::json::DecodeLimits = sluice::protocol::json::DecodeLimits { max_elements: 1 << 20 };

/// An HTTP body and the `Inference-Header-Content-Length` header sent with it (`None`: no header).
pub struct Framed {
    pub header_length: Option<String>,
    pub body: Bytes,
}

/// Reads a fuzz input as an HTTP body and its header-length header. The first byte picks how the header is made:
///
/// - `mode % 4 == 0`: no header, the body is the rest (plain JSON);
/// - `mode % 4 == 1`: the next two bytes are the header length as a little-endian `u16`, written in decimal, and the
///   body follows (the binary extension as clients send it; the seed corpus uses this form);
/// - `mode % 4 == 2`: as 1, with the number decorated the way a sloppy client or proxy might (spaces, `+`, zeros);
/// - `mode % 4 == 3`: the next byte is a length `n % 32`, the header is the next `n` bytes as text, the body the rest.
pub fn frame(data: &[u8]) -> Framed {
    let Some((&mode, rest)) = data.split_first() else {
        return Framed { header_length: None, body: Bytes::new() };
    };
    let number = |rest: &[u8]| -> (u16, Bytes) {
        match rest {
            [a, b, body @ ..] => (u16::from_le_bytes([*a, *b]), Bytes::copy_from_slice(body)),
            _ => (0, Bytes::copy_from_slice(rest)),
        }
    };
    match mode % 4 {
        0 => Framed { header_length: None, body: Bytes::copy_from_slice(rest) },
        1 => {
            let (n, body) = number(rest);
            Framed { header_length: Some(n.to_string()), body }
        }
        2 => {
            let (n, body) = number(rest);
            let text = match (mode >> 2) % 4 {
                0 => format!(" {n} "),
                1 => format!("+{n}"),
                2 => format!("{n}\t"),
                _ => format!("00{n}"),
            };
            Framed { header_length: Some(text), body }
        }
        _ => {
            let (&n, rest) = rest.split_first().unwrap_or((&0, &[]));
            let n = (n as usize % 32).min(rest.len());
            Framed { header_length: Some(String::from_utf8_lossy(&rest[..n]).into_owned()), body: Bytes::copy_from_slice(&rest[n..]) }
        }
    }
}

/// Builds a fuzz input of the `mode % 4 == 1` form: a binary-extension body of `json` then `binary`.
pub fn binary_input(json: &[u8], binary: &[u8]) -> Vec<u8> {
    let mut out = vec![1u8];
    out.extend_from_slice(&(json.len() as u16).to_le_bytes());
    out.extend_from_slice(json);
    out.extend_from_slice(binary);
    out
}

/// Splits an encoded body the way the receiving end does.
pub fn split(encoded: &sluice::protocol::json::EncodedBody) -> (Bytes, Bytes) {
    let length = encoded.json_header_length.map(|n| n.to_string());
    sluice::protocol::json::split_body(&encoded.body, length.as_deref()).expect("an encoded body splits at its own header length")
}

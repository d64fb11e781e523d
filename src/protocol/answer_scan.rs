//! A fast check of a forwarded V2 answer's JSON header: how many bytes of binary tensor data its outputs claim.
//!
//! The gateway passes upstream answers on undecoded, but still checks that the JSON header is a V2 answer and that the
//! binary section is as long as the outputs say (`transport::check_answer`). serde does that at ~30 instructions a
//! byte, a tenth of a forwarded request's CPU; this scanner reads the header once, and a per-thread memo skips even
//! that for a header the same as the last one (`claimed_binary_bytes_memo`). Like `json_fast`, it only handles the
//! plain shape and answers `None` for anything else (escaped keys, duplicate keys, `parameters` that is not an
//! object, sizes that are not plain integers, malformed JSON), and the caller then runs serde, which accepts or
//! refuses with its precise message. So `Some(n)` is only ever returned where serde would have found the same `n`.

/// The same sum by serde: the fallback for what [`claimed_binary_bytes`] leaves, with serde's precise error for a
/// header that is not a V2 answer (and the reference the scanner is tested against).
pub fn claimed_binary_bytes_by_serde(head: &[u8]) -> Result<u64, String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        outputs: Vec<Output>,
    }
    #[derive(serde::Deserialize)]
    struct Output {
        #[serde(default)]
        parameters: Option<Parameters>,
    }
    #[derive(serde::Deserialize)]
    struct Parameters {
        #[serde(default)]
        binary_data_size: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(head).map_err(|e| format!("not a V2 inference answer: {e}"))?;
    let mut sizes = answer.outputs.iter().filter_map(|o| o.parameters.as_ref().and_then(|p| p.binary_data_size));
    sizes.try_fold(0u64, u64::checked_add).ok_or_else(|| "its outputs' binary_data_size add up to more than 2^64 bytes".to_string())
}

/// serde_json's nesting limit: deeper headers go to serde (which refuses them).
const MAX_DEPTH: usize = 128;

/// Where in the answer a value sits: only these places matter to the sum.
#[derive(Clone, Copy, PartialEq)]
enum Place {
    Top,
    Outputs,
    Output,
    Parameters,
    BinaryDataSize,
    Other,
}

/// [`claimed_binary_bytes`], remembering the last header this thread scanned: a worker answers a client's requests of
/// one shape with the same header byte for byte (model, version, output names, shapes, sizes), so the gateway
/// mostly compares instead of scanning (a 150-byte header: a comparison of a few dozen instructions instead of ~2,700).
/// The answer is a function of the bytes alone, so the memo can never give another header's sum.
pub fn claimed_binary_bytes_memo(head: &[u8]) -> Option<u64> {
    thread_local! {
        static LAST: std::cell::RefCell<(Vec<u8>, u64)> = const { std::cell::RefCell::new((Vec::new(), 0)) };
    }
    LAST.with(|last| {
        let mut last = last.try_borrow_mut().ok()?;
        if !head.is_empty() && last.0 == head {
            return Some(last.1);
        }
        let sum = claimed_binary_bytes(head)?;
        // Only headers of a usual size are kept, so one odd answer cannot pin a large buffer to the thread.
        if head.len() <= MAX_REMEMBERED {
            last.0.clear();
            last.0.extend_from_slice(head);
            last.1 = sum;
        }
        Some(sum)
    })
}

/// The longest header [`claimed_binary_bytes_memo`] keeps.
const MAX_REMEMBERED: usize = 4096;

/// The length of a string's contents: up to the first quote, backslash or control character (the last two cannot
/// be in a JSON string raw), 8 bytes at a time. Most of a header is strings; byte by byte they took a third of a scan.
fn string_length(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `x` that is zero. A borrow can mark a byte above a true zero byte too, never one
    // below, so the lowest mark is exact.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        // Bytes below 0x20 wrap when 0x20 is taken away (high bit set) and had no high bit before; as above, only
        // bytes above a true hit can be marked wrongly.
        let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
        let hits = zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | control;
        if hits != 0 {
            return Some(at + (hits.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..].iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|n| at + n)
}

/// The sum of `outputs[*].parameters.binary_data_size` of a V2 answer header, when the header is plain JSON of the
/// usual shape; `None`: not handled here (see the module's documentation).
pub fn claimed_binary_bytes(head: &[u8]) -> Option<u64> {
    // serde_json reads strings as UTF-8; checking the whole header once lets the scanner work on bytes.
    std::str::from_utf8(head).ok()?;
    let mut scan = Scanner { bytes: head, at: 0, sum: 0, outputs: false };
    scan.skip_space();
    scan.value(Place::Top, 0)?;
    scan.skip_space();
    (scan.at == head.len() && scan.outputs).then_some(scan.sum)
}

struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    sum: u64,
    /// The top-level `outputs` was seen (serde requires it).
    outputs: bool,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn skip_space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    fn value(&mut self, place: Place, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match (place, self.peek()?) {
            (Place::Top | Place::Output | Place::Parameters | Place::Other, b'{') => self.object(place, depth),
            (Place::Outputs | Place::Other, b'[') => self.array(place, depth),
            (Place::BinaryDataSize, b'0'..=b'9') => {
                let size = self.integer()?;
                self.sum = self.sum.checked_add(size)?;
                Some(())
            }
            // serde reads a null size or null parameters as absent.
            (Place::BinaryDataSize | Place::Parameters, b'n') => self.literal(b"null"),
            (Place::Other, b'"') => self.string().map(|_| ()),
            (Place::Other, b'-' | b'0'..=b'9') => self.number(),
            (Place::Other, b't') => self.literal(b"true"),
            (Place::Other, b'f') => self.literal(b"false"),
            (Place::Other, b'n') => self.literal(b"null"),
            _ => None,
        }
    }

    fn object(&mut self, place: Place, depth: usize) -> Option<()> {
        self.eat(b'{')?;
        // The keys of this object that serde would refuse to see twice.
        let mut seen = [false; 2];
        self.skip_space();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            self.skip_space();
            let key = self.string()?;
            let (inner, slot) = match (place, key) {
                (Place::Top, b"outputs") => (Place::Outputs, Some(0)),
                (Place::Output, b"parameters") => (Place::Parameters, Some(0)),
                (Place::Parameters, b"binary_data_size") => (Place::BinaryDataSize, Some(1)),
                _ => (Place::Other, None),
            };
            if let Some(slot) = slot {
                if std::mem::replace(&mut seen[slot], true) {
                    return None;
                }
            }
            if inner == Place::Outputs {
                self.outputs = true;
            }
            self.skip_space();
            self.eat(b':')?;
            self.skip_space();
            self.value(inner, depth + 1)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, place: Place, depth: usize) -> Option<()> {
        self.eat(b'[')?;
        let element = if place == Place::Outputs { Place::Output } else { Place::Other };
        self.skip_space();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            self.skip_space();
            self.value(element, depth + 1)?;
            self.skip_space();
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A string without escapes (an escaped one goes to serde), returned without its quotes.
    fn string(&mut self) -> Option<&[u8]> {
        self.eat(b'"')?;
        let start = self.at;
        let length = string_length(&self.bytes[start..])?;
        self.at = start + length;
        self.eat(b'"')?;
        Some(&self.bytes[start..start + length])
    }

    /// An unsigned integer as JSON writes it (no sign, fraction, exponent or leading zero), that fits in u64.
    fn integer(&mut self) -> Option<u64> {
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(digit @ b'0'..=b'9') = self.peek() {
            value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let leading_zero = self.bytes[start] == b'0' && self.at - start > 1;
        let more = matches!(self.peek(), Some(b'.' | b'e' | b'E'));
        (!leading_zero && !more).then_some(value)
    }

    /// Any JSON number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes[self.at..].starts_with(word).then(|| self.at += word.len())
    }
}

#[cfg(test)]
mod tests {
    use super::claimed_binary_bytes;

    /// What serde (the reference) finds: the sum of the sizes, or nothing for an error.
    fn serde_sum(head: &[u8]) -> Option<u64> {
        super::claimed_binary_bytes_by_serde(head).ok()
    }

    const SEEDS: &[&str] = &[
        r#"{"model_name":"identity","model_version":"1","outputs":[{"name":"output","datatype":"FP32","shape":[1,256],"parameters":{"binary_data_size":1024}}]}"#,
        r#"{"id":"q1","model_name":"m","outputs":[{"name":"a","datatype":"FP32","shape":[2],"data":[1.5,-2e3]},{"name":"b","parameters":{"binary_data_size":8,"x":null}}],"parameters":{"t":true,"f":false}}"#,
        r#" { "outputs" : [ ] } "#,
        r#"{"outputs":[{"parameters":null},{"parameters":{"binary_data_size":null}},{}]}"#,
    ];

    #[test]
    fn plain_headers_are_summed_like_serde_does() {
        assert_eq!(claimed_binary_bytes(SEEDS[0].as_bytes()), Some(1024));
        assert_eq!(claimed_binary_bytes(SEEDS[1].as_bytes()), Some(8));
        assert_eq!(claimed_binary_bytes(SEEDS[2].as_bytes()), Some(0));
        assert_eq!(claimed_binary_bytes(SEEDS[3].as_bytes()), Some(0));
    }

    #[test]
    fn unusual_or_bad_headers_are_left_to_serde() {
        for head in [
            r#"{"model_name":"m"}"#,                                              // no outputs
            r#"{"outputs":[],"outputs":[]}"#,                                     // duplicate key
            r#"{"outp\u0075ts":[]}"#,                                             // escaped key
            r#"{"outputs":[{"parameters":{"binary_data_size":1.0}}]}"#,           // not an integer
            r#"{"outputs":[{"parameters":{"binary_data_size":-1}}]}"#,            // negative
            r#"{"outputs":[{"parameters":{"binary_data_size":01}}]}"#,            // leading zero
            r#"{"outputs":[{"parameters":{"binary_data_size":18446744073709551616}}]}"#, // over u64
            r#"{"outputs":[{"parameters":[4]}]}"#,                                // parameters as a list
            r#"{"outputs":[[]]}"#,                                                // output as a list
            r#"{"outputs":[]} x"#,                                                // trailing bytes
            r#"{"outputs":[],}"#,                                                 // trailing comma
            r#"{"outputs":[], "a": 1.}"#,                                         // bad number
            "{\"outputs\":[], \"a\": \"\u{1}\"}",                                 // control character
            r#"[]"#,
            "",
        ] {
            assert_eq!(claimed_binary_bytes(head.as_bytes()), None, "{head}");
        }
        assert_eq!(claimed_binary_bytes(&[b'{', b'"', 0xff, b'"', b':', b'1', b'}']), None, "not UTF-8");
        let deep = format!("{{\"outputs\":[],\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert_eq!(claimed_binary_bytes(deep.as_bytes()), None);
    }

    #[test]
    fn strings_end_where_a_byte_by_byte_search_says() {
        // Every length up to three words, with the end (or none) at every place and every byte value there.
        for length in 0..24 {
            for end in 0..=length {
                for byte in 0..=255u8 {
                    let mut text = vec![b'a'; length];
                    if end < length {
                        text[end] = byte;
                    }
                    let expected = text.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20);
                    assert_eq!(super::string_length(&text), expected, "{text:?}");
                }
            }
        }
        // Bytes with the high bit set (UTF-8) and just around the searched values are not ends.
        let text = "é\u{7f}!#[]\u{1f}".as_bytes();
        assert_eq!(super::string_length(text), Some(text.len() - 1));
    }

    #[test]
    fn the_memo_answers_as_the_scanner_does() {
        use super::claimed_binary_bytes_memo as memo;
        let other = r#"{"outputs":[{"parameters":{"binary_data_size":16}}]}"#.as_bytes();
        for head in [SEEDS[0].as_bytes(), SEEDS[0].as_bytes(), other, SEEDS[0].as_bytes(), b"{}", b"", other, other] {
            assert_eq!(memo(head), claimed_binary_bytes(head), "{}", String::from_utf8_lossy(head));
        }
        // A header that differs in one byte from the remembered one is scanned again.
        let mut changed = SEEDS[0].as_bytes().to_vec();
        assert_eq!(memo(&changed), Some(1024));
        let at = changed.len() - 8;
        changed[at] = b'9';
        assert_eq!(memo(&changed), Some(9024));
        changed[at] = b'x';
        assert_eq!(memo(&changed), None);
    }

    /// Every single-byte deletion, duplication and replacement of the seeds: wherever the scanner answers, serde agrees.
    #[test]
    fn the_scanner_never_accepts_what_serde_would_not() {
        let replacements = b"{}[]\",:0123456789-+.eE \\ntfua";
        let mut answered = 0;
        for seed in SEEDS {
            let seed = seed.as_bytes();
            let variants = crate::testing::single_byte_mutations(seed, replacements);
            for variant in variants {
                if let Some(sum) = claimed_binary_bytes(&variant) {
                    answered += 1;
                    assert_eq!(Some(sum), serde_sum(&variant), "{}", String::from_utf8_lossy(&variant));
                }
            }
        }
        assert!(answered > 100, "the scanner should handle most harmless variants, handled {answered}");
    }
}

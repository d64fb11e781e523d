//! OCI API request signing (draft-cavage-http-signatures-08, `version="1"`), for `POST` requests with a JSON body.
//!
//! Pure functions plus one RSA operation, so the exact bytes can be unit-tested against a vector produced by the
//! official `oci` Python SDK (see the tests). The signing string is one `name: value` line per signed header, in the
//! order of [`SIGNED_HEADERS`], joined with `\n` and without a trailing newline; it is signed with RSASSA-PKCS1-v1_5
//! over SHA-256 (deterministic, so a key and a string always give the same signature).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::rsa::KeyPair;
use ring::signature::RSA_PKCS1_SHA256;
use std::time::SystemTime;

/// The headers a body-carrying request signs, in signing-string order (the `headers=` parameter).
pub const SIGNED_HEADERS: &str = "date (request-target) host content-length content-type x-content-sha256";

/// The only body type we send.
pub const CONTENT_TYPE: &str = "application/json";

#[derive(Debug, thiserror::Error)]
#[error("RSA signing failed")]
pub struct SignError;

/// The header values of one signed request. `content-type` is always [`CONTENT_TYPE`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub date: String,
    pub host: String,
    pub content_length: String,
    pub x_content_sha256: String,
    pub authorization: String,
}

/// Standard base64 (padded) of the SHA-256 of the exact body bytes.
pub fn content_sha256(body: &[u8]) -> String {
    STANDARD.encode(ring::digest::digest(&ring::digest::SHA256, body).as_ref())
}

/// The string that is signed, for a `POST` of `content_length` bytes to `path` (path and query as sent) on `host`
/// (the URL authority as sent).
pub fn signing_string(date: &str, path: &str, host: &str, content_length: usize, x_content_sha256: &str) -> String {
    format!(
        "date: {date}\n(request-target): post {path}\nhost: {host}\ncontent-length: {content_length}\n\
         content-type: {CONTENT_TYPE}\nx-content-sha256: {x_content_sha256}"
    )
}

/// The `Authorization` header value.
pub fn authorization(key_id: &str, signature_b64: &str) -> String {
    format!(r#"Signature version="1",keyId="{key_id}",algorithm="rsa-sha256",headers="{SIGNED_HEADERS}",signature="{signature_b64}""#)
}

/// Signs requests with one API key (shared by the client through an `Arc`).
pub struct Signer {
    key_id: String,
    key: KeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// `key_id` is `<tenancy OCID>/<user OCID>/<key fingerprint>`.
    pub fn new(key_id: String, key: KeyPair) -> Signer {
        Signer { key_id, key, rng: SystemRandom::new() }
    }

    /// Standard base64 of the RSA-SHA256 signature of `message`. About a millisecond of CPU for a 2048-bit key.
    pub fn sign(&self, message: &[u8]) -> Result<String, SignError> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key.sign(&RSA_PKCS1_SHA256, &self.rng, message, &mut signature).map_err(|_| SignError)?;
        Ok(STANDARD.encode(&signature))
    }

    /// The signed headers of a `POST` of `body` to `path` on `host`, dated `date`.
    pub fn sign_post(&self, host: &str, path: &str, body: &[u8], date: SystemTime) -> Result<SignedHeaders, SignError> {
        let date = httpdate::fmt_http_date(date);
        let x_content_sha256 = content_sha256(body);
        let message = signing_string(&date, path, host, body.len(), &x_content_sha256);
        let signature = self.sign(message.as_bytes())?;
        Ok(SignedHeaders {
            authorization: authorization(&self.key_id, &signature),
            date,
            host: host.to_string(),
            content_length: body.len().to_string(),
            x_content_sha256,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::oci::config::{parse_key, tests::FINGERPRINT, tests::PKCS1, tests::PKCS8};
    use std::time::{Duration, UNIX_EPOCH};

    // Produced with the `oci` Python SDK 2.189.0 (`oci.signer.Signer(...)` on a prepared
    // `requests.Request("POST", URL, headers={"date": DATE, "content-type": "application/json"}, data=BODY)`)
    // and the test-only key in testdata/.
    const TENANCY: &str = "ocid1.tenancy.oc1..aaaatest";
    const USER: &str = "ocid1.user.oc1..aaaatest";
    const DATE: &str = "Sun, 05 Jan 2014 21:31:40 GMT";
    const BODY: &[u8] = br#"{"metricData":[]}"#;
    const SDK_SHA256: &str = "ehckKbOjkqpAGOtAH798Bb72JS9Bxz4qH3CFsABB2i8=";
    const SDK_SIGNATURE_OCI: &str = "ZKWp+jeUvy15uTJgOr9JB379YFoSX3WH3hKnxbKDX/ONBVRwjS70SWDGPPEN8RGg68fozYtYWAMbN+E9PHrI3doH37DMylHN2n3EknUDv3jutwBJGVs4DCvFuzqrDXhLmgkRZp4aWMJOOosD3Qh3XgzfkLDX5mcP/6soSY5U0mnDUQ2uZa8dJLEogtZq7txeuIuqKHTveWPiCHRf585C6Tyfm4DK0XjidexXZLZ0SsnsrMY7GK+5W2rfgRBrvALnWYTqGAGmi2hGE21GP5OFsZh/hcOtSQuw1CEmb5ndfPs14XjZ+i3vKscrW7Xo7ge9VRdwxYK25RuvFFjio8OkvA==";
    const SDK_SIGNATURE_LOCAL: &str = "v8gTrbtQl5IezR0DH3wh82k7R2q6eyC+lXQD1PrKmQHilkUApXNBwhCVZNlH6Ki6nWgQZuSzFhVtFm2Eou7kspfKdd7dVL8uXgZDZyDthSQ7Aw6W4E8UL17PHuBrKYSkYBHzWwR8VrgTxprX6g5a5EqfIxPZWbh9uDnNlWBXFeWRIDDJHEvMVCwGcTd9Or6uGT/fRPahJc9CM+vH347Aaav0umnb2YBWMElOFoh9iml/FUDj2qQXfll98HBCPvYIVIQXjYUYYWqATv6g6nVasRkhxlyo5baewy2Af8NC9Bmgx7Ut8CcCL/kJRdPHrCB9CQ2wVxoG4puAlE1kqPjMsA==";

    fn date() -> SystemTime {
        // Sun, 05 Jan 2014 21:31:40 GMT
        UNIX_EPOCH + Duration::from_secs(1_388_957_500)
    }

    fn signer(pem: &str) -> Signer {
        Signer::new(format!("{TENANCY}/{USER}/{FINGERPRINT}"), parse_key(pem.as_bytes()).unwrap())
    }

    #[test]
    fn body_hash() {
        assert_eq!(content_sha256(BODY), SDK_SHA256);
        assert_eq!(content_sha256(b""), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
    }

    #[test]
    fn signing_string_is_exact() {
        let s = signing_string(DATE, "/20180401/metrics", "telemetry-ingestion.us-ashburn-1.oraclecloud.com", 17, SDK_SHA256);
        assert_eq!(
            s,
            "date: Sun, 05 Jan 2014 21:31:40 GMT\n\
             (request-target): post /20180401/metrics\n\
             host: telemetry-ingestion.us-ashburn-1.oraclecloud.com\n\
             content-length: 17\n\
             content-type: application/json\n\
             x-content-sha256: ehckKbOjkqpAGOtAH798Bb72JS9Bxz4qH3CFsABB2i8="
        );
        assert!(!s.ends_with('\n'));
    }

    #[test]
    fn headers_match_the_python_sdk() {
        for pem in [PKCS8, PKCS1] {
            let s = signer(pem);
            let h = s.sign_post("telemetry-ingestion.us-ashburn-1.oraclecloud.com", "/20180401/metrics", BODY, date()).unwrap();
            assert_eq!(h.date, DATE);
            assert_eq!(h.content_length, "17");
            assert_eq!(h.x_content_sha256, SDK_SHA256);
            assert_eq!(
                h.authorization,
                format!(
                    r#"Signature version="1",keyId="{TENANCY}/{USER}/{FINGERPRINT}",algorithm="rsa-sha256",headers="date (request-target) host content-length content-type x-content-sha256",signature="{SDK_SIGNATURE_OCI}""#
                )
            );
            let local = s.sign_post("127.0.0.1:8080", "/20180401/metrics", BODY, date()).unwrap();
            assert_eq!(local.host, "127.0.0.1:8080");
            assert!(local.authorization.ends_with(&format!(r#"signature="{SDK_SIGNATURE_LOCAL}""#)), "{}", local.authorization);
        }
    }
}

//! API keys and bearer tokens per tenant. A presented key is hashed (SHA-256) and compared with every configured hash
//! in constant time, so neither the config file nor response timing gives a key away. A tenant's scopes say which
//! plane it may use; its token bucket, how fast.

use super::token_bucket::TokenBucket;
use crate::config::{AuthConfig, Scope};
use crate::metrics::{catalogue, Metrics};
use ::metrics::Counter;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which routes a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plane {
    /// Inference and metadata on the HTTP and gRPC data ports.
    Data,
    /// The admin port.
    Admin,
}

impl Plane {
    fn scope(self) -> Scope {
        match self {
            Plane::Data => Scope::Infer,
            Plane::Admin => Scope::Admin,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Plane::Data => "data",
            Plane::Admin => "admin",
        }
    }
}

/// The authenticated tenant of a request, put in its extensions for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantName(pub Arc<str>);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send `Authorization: Bearer <key>` or `x-api-key: <key>`")]
    Missing,
    #[error("the key is not valid")]
    Invalid,
    #[error("tenant '{tenant}' may not use the {plane} routes")]
    Forbidden { tenant: String, plane: &'static str },
    #[error("tenant '{tenant}' is over its rate limit of {rate} requests/s; retry later")]
    RateLimited { tenant: String, rate: f64, retry_after: Duration },
}

struct Tenant {
    name: TenantName,
    scopes: Vec<Scope>,
    limit: Option<(f64, TokenBucket)>,
    admitted_data: Counter,
    admitted_admin: Counter,
    rate_limited: Counter,
}

/// Checks credentials against the configured tenants. Built only when `[auth] enabled`.
pub struct Authenticator {
    tenants: Vec<Tenant>,
    /// (SHA-256 of a key, index of its tenant).
    keys: Vec<([u8; 32], usize)>,
    missing: Counter,
    invalid: Counter,
    forbidden: Counter,
}

fn decode_hex(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if text.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The SHA-256 of a key as stored in the config (`sluice hash-key`).
pub fn hash_key(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Equality that takes the same time wherever the inputs differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    std::hint::black_box(diff) == 0
}

impl Authenticator {
    /// `None` when authentication is off. The config is validated, so every hash decodes.
    pub fn new(config: &AuthConfig, metrics: &Metrics) -> Option<Arc<Authenticator>> {
        if !config.enabled {
            return None;
        }
        let reason = |r: &'static str| metrics.counter(catalogue::AUTH_REJECTED, &[("reason", r)]);
        let mut tenants = Vec::new();
        let mut keys = Vec::new();
        for (index, t) in config.tenants.iter().enumerate() {
            keys.extend(t.key_sha256.iter().filter_map(|k| decode_hex(k)).map(|k| (k, index)));
            let limit = (t.rate_limit > 0.0).then(|| {
                let burst = t.burst.unwrap_or(t.rate_limit).max(1.0);
                (t.rate_limit, TokenBucket::new(t.rate_limit, burst))
            });
            let admitted = |plane: &str| metrics.counter(catalogue::TENANT_REQUESTS, &[("tenant", t.name.as_str()), ("plane", plane)]);
            tenants.push(Tenant {
                name: TenantName(Arc::from(t.name.as_str())),
                scopes: t.scopes.clone(),
                limit,
                admitted_data: admitted("data"),
                admitted_admin: admitted("admin"),
                rate_limited: metrics.counter(catalogue::AUTH_REJECTED, &[("reason", "rate_limited"), ("tenant", t.name.as_str())]),
            });
        }
        Some(Arc::new(Authenticator { tenants, keys, missing: reason("missing"), invalid: reason("invalid"), forbidden: reason("forbidden") }))
    }

    /// Admits a request carrying `credential` (the key, without any `Bearer` prefix) to `plane`.
    pub fn check(&self, credential: Option<&str>, plane: Plane) -> Result<TenantName, AuthError> {
        let Some(credential) = credential.filter(|c| !c.is_empty()) else {
            self.missing.increment(1);
            return Err(AuthError::Missing);
        };
        let presented: [u8; 32] = match ring::digest::digest(&ring::digest::SHA256, credential.as_bytes()).as_ref().try_into() {
            Ok(hash) => hash,
            Err(_) => return Err(AuthError::Invalid),
        };
        // Every stored hash is compared, whichever matches.
        let mut found = None;
        for (hash, index) in &self.keys {
            if same(hash, &presented) {
                found = Some(*index);
            }
        }
        let Some(tenant) = found.and_then(|i| self.tenants.get(i)) else {
            self.invalid.increment(1);
            return Err(AuthError::Invalid);
        };
        if !tenant.scopes.contains(&plane.scope()) {
            self.forbidden.increment(1);
            return Err(AuthError::Forbidden { tenant: tenant.name.0.to_string(), plane: plane.label() });
        }
        if plane == Plane::Data {
            if let Some((rate, bucket)) = &tenant.limit {
                if let Err(retry_after) = bucket.take(Instant::now()) {
                    tenant.rate_limited.increment(1);
                    return Err(AuthError::RateLimited { tenant: tenant.name.0.to_string(), rate: *rate, retry_after });
                }
            }
            tenant.admitted_data.increment(1);
        } else {
            tenant.admitted_admin.increment(1);
        }
        Ok(tenant.name.clone())
    }
}

/// The key in an `Authorization: Bearer <key>` or `x-api-key: <key>` value pair.
pub fn credential<'a>(authorization: Option<&'a str>, api_key: Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = authorization {
        let (scheme, rest) = value.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim());
    }
    api_key.map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TenantConfig;

    fn authenticator() -> Arc<Authenticator> {
        let config = AuthConfig {
            enabled: true,
            tenants: vec![
                TenantConfig { name: "apps".into(), key_sha256: vec![hash_key("k-apps"), hash_key("k-apps-new")], rate_limit: 2.0, burst: Some(2.0), ..TenantConfig::default() },
                TenantConfig { name: "ops".into(), key_sha256: vec![hash_key("k-ops")], scopes: vec![Scope::Admin], ..TenantConfig::default() },
            ],
        };
        Authenticator::new(&config, &Metrics::new(false)).expect("enabled")
    }

    #[test]
    fn keys_scopes_and_rates() {
        let auth = authenticator();
        assert_eq!(auth.check(None, Plane::Data), Err(AuthError::Missing));
        assert_eq!(auth.check(Some("nope"), Plane::Data), Err(AuthError::Invalid));
        assert_eq!(auth.check(Some("k-apps"), Plane::Data).map(|t| t.0.to_string()), Ok("apps".into()));
        assert_eq!(auth.check(Some("k-apps-new"), Plane::Data).map(|t| t.0.to_string()), Ok("apps".into()));
        assert!(matches!(auth.check(Some("k-apps"), Plane::Data), Err(AuthError::RateLimited { .. })), "burst of 2 spent");
        assert!(matches!(auth.check(Some("k-apps"), Plane::Admin), Err(AuthError::Forbidden { .. })));
        assert!(matches!(auth.check(Some("k-ops"), Plane::Data), Err(AuthError::Forbidden { .. })));
        assert!(auth.check(Some("k-ops"), Plane::Admin).is_ok());
        assert!(Authenticator::new(&AuthConfig::default(), &Metrics::new(false)).is_none());
    }

    #[test]
    fn credentials_come_from_either_header() {
        assert_eq!(credential(Some("Bearer abc"), None), Some("abc"));
        assert_eq!(credential(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(credential(Some("Basic abc"), None), None);
        assert_eq!(credential(None, Some("abc")), Some("abc"));
        assert_eq!(credential(None, None), None);
        assert_eq!(hash_key("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}

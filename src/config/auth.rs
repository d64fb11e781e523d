//! `[auth]`: API keys / bearer tokens per tenant. Keys are stored as SHA-256 hashes (`sluice hash-key` prints one),
//! so the config file never holds a usable secret. See docs/SECURITY.md.

use super::ConfigError;
use serde::Deserialize;
use std::path::Path;

/// What a key may reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The data plane: inference, model metadata, statistics and server metadata on the HTTP and gRPC ports.
    Infer,
    /// The admin port: /metrics, /scaling and the repository API.
    Admin,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Off: every route is open (keep the ports on a private network then).
    pub enabled: bool,
    pub tenants: Vec<TenantConfig>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenantConfig {
    /// Shown in logs (`tenant` field) and metrics (`tenant` label).
    pub name: String,
    /// SHA-256 of each of the tenant's keys, as 64 hex digits (several, so keys can be rotated without downtime).
    pub key_sha256: Vec<String>,
    pub scopes: Vec<Scope>,
    /// Requests per second this tenant may send on the data plane (0 = no limit); over it: 429 with Retry-After.
    pub rate_limit: f64,
    /// Requests that may come at once above the rate (default: one second's worth, at least 1).
    pub burst: Option<f64>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig { name: String::new(), key_sha256: Vec::new(), scopes: vec![Scope::Infer], rate_limit: 0.0, burst: None }
    }
}

impl AuthConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { path: path.into(), key, message };
        if self.enabled && self.tenants.is_empty() {
            return Err(invalid("auth.tenants", "must list at least one tenant when auth.enabled is true".into()));
        }
        let mut keys = std::collections::BTreeSet::new();
        for (i, tenant) in self.tenants.iter().enumerate() {
            let name = &tenant.name;
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(invalid("auth.tenants.name", format!("'{name}' must be 1 to 64 letters, digits, '-', '_' or '.'")));
            }
            if self.tenants[..i].iter().any(|t| &t.name == name) {
                return Err(invalid("auth.tenants.name", format!("'{name}' names two tenants")));
            }
            if tenant.key_sha256.is_empty() {
                return Err(invalid("auth.tenants.key_sha256", format!("tenant '{name}' has no key")));
            }
            for key in &tenant.key_sha256 {
                if key.len() != 64 || !key.chars().all(|c| c.is_ascii_hexdigit()) {
                    return Err(invalid(
                        "auth.tenants.key_sha256",
                        format!("tenant '{name}': '{key}' is not 64 hex digits (store the SHA-256 of the key: `sluice hash-key`)"),
                    ));
                }
                if !keys.insert(key.to_ascii_lowercase()) {
                    return Err(invalid("auth.tenants.key_sha256", format!("tenant '{name}': a key is listed twice (keys must be unique)")));
                }
            }
            if tenant.scopes.is_empty() {
                return Err(invalid("auth.tenants.scopes", format!("tenant '{name}' has no scope (\"infer\", \"admin\")")));
            }
            if !(tenant.rate_limit >= 0.0 && tenant.rate_limit.is_finite()) {
                return Err(invalid("auth.tenants.rate_limit", format!("tenant '{name}': must be a finite number, 0 or more")));
            }
            if tenant.burst.is_some_and(|b| !(b >= 1.0 && b.is_finite())) {
                return Err(invalid("auth.tenants.burst", format!("tenant '{name}': must be at least 1")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<(), String> {
        let config: AuthConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate(Path::new("t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn tenants_are_checked() {
        let key = "a".repeat(64);
        check(&format!("enabled = true\n[[tenants]]\nname = 'a'\nkey_sha256 = ['{key}']\nrate_limit = 10.0")).unwrap();
        for (text, key_name) in [
            ("enabled = true".to_string(), "auth.tenants"),
            (format!("[[tenants]]\nname = 'a b'\nkey_sha256 = ['{key}']"), "auth.tenants.name"),
            ("[[tenants]]\nname = 'a'\nkey_sha256 = ['secret']".to_string(), "auth.tenants.key_sha256"),
            (format!("[[tenants]]\nname = 'a'\nkey_sha256 = ['{key}']\n[[tenants]]\nname = 'b'\nkey_sha256 = ['{key}']"), "auth.tenants.key_sha256"),
            (format!("[[tenants]]\nname = 'a'\nkey_sha256 = ['{key}']\nscopes = []"), "auth.tenants.scopes"),
            (format!("[[tenants]]\nname = 'a'\nkey_sha256 = ['{key}']\nburst = 0.5"), "auth.tenants.burst"),
        ] {
            let err = check(&text).unwrap_err();
            assert!(err.contains(&format!("`{key_name}`")), "{text}: {err}");
        }
        assert!(check(&format!("[[tenants]]\nname = 'a'\nkey_sha256 = ['{key}']\nscopes = ['root']")).is_err());
    }
}

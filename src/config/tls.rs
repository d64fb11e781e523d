//! `[server.tls]` and `[admin.tls]`: TLS (rustls) on the listeners, optional client certificates (mTLS) and certificate
//! reload without a restart. The files themselves are read and checked when the server starts (`server::tls`); here
//! only the settings are. See docs/SECURITY.md.

use super::ConfigError;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Whether clients must show a certificate signed by `client_ca`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client without a valid certificate is refused during the handshake (mutual TLS).
    Required,
    /// A client may come without a certificate; one it shows must be valid.
    Optional,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM (leaf first).
    pub cert: PathBuf,
    /// The certificate's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates must chain to. Set: client certificates are checked.
    pub client_ca: Option<PathBuf>,
    /// `required` (the default when `client_ca` is set) or `optional`.
    pub client_auth: Option<ClientAuth>,
    /// How often the files are read again; when they changed, new connections get the new certificate (0 = never).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// A TLS handshake that takes longer is dropped.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: None,
            client_auth: None,
            reload_interval: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl TlsConfig {
    /// The client-certificate policy in force: none without `client_ca`.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.client_ca.as_ref().map(|_| self.client_auth.unwrap_or(ClientAuth::Required))
    }

    /// Checks the settings of `[server.tls]` or, with `admin`, `[admin.tls]`; the files are checked at start.
    pub fn validate(&self, admin: bool, path: &Path) -> Result<(), ConfigError> {
        let invalid = |server_key: &'static str, admin_key: &'static str, message: &str| ConfigError::Invalid {
            path: path.into(),
            key: if admin { admin_key } else { server_key },
            message: message.into(),
        };
        if self.cert.as_os_str().is_empty() {
            return Err(invalid("server.tls.cert", "admin.tls.cert", "is required when the table is present (the certificate chain, PEM)"));
        }
        if self.key.as_os_str().is_empty() {
            return Err(invalid("server.tls.key", "admin.tls.key", "is required when the table is present (the private key, PEM)"));
        }
        if self.client_auth.is_some() && self.client_ca.is_none() {
            return Err(invalid("server.tls.client_auth", "admin.tls.client_auth", "needs client_ca (the CA certificates client certificates are checked against)"));
        }
        if !self.reload_interval.is_zero() && self.reload_interval < Duration::from_millis(100) {
            return Err(invalid("server.tls.reload_interval", "admin.tls.reload_interval", "must be 0 (no reload) or at least 100ms"));
        }
        if self.handshake_timeout.is_zero() || self.handshake_timeout > Duration::from_secs(300) {
            return Err(invalid("server.tls.handshake_timeout", "admin.tls.handshake_timeout", "must be above zero and at most 5m"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_errors_name_the_key() {
        let path = Path::new("sluice.toml");
        let tls: TlsConfig = toml::from_str("cert = \"c.pem\"\nkey = \"k.pem\"\n").unwrap();
        tls.validate(false, path).unwrap();
        assert_eq!(tls.client_auth(), None);
        let tls: TlsConfig = toml::from_str("cert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n").unwrap();
        assert_eq!(tls.client_auth(), Some(ClientAuth::Required));
        let tls: TlsConfig = toml::from_str("cert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\nclient_auth = \"optional\"\n").unwrap();
        assert_eq!(tls.client_auth(), Some(ClientAuth::Optional));
        for (text, admin, key) in [
            ("key = \"k.pem\"", false, "`server.tls.cert`"),
            ("cert = \"c.pem\"", true, "`admin.tls.key`"),
            ("cert = \"c\"\nkey = \"k\"\nclient_auth = \"required\"", false, "`server.tls.client_auth`"),
            ("cert = \"c\"\nkey = \"k\"\nreload_interval = \"1ms\"", false, "`server.tls.reload_interval`"),
            ("cert = \"c\"\nkey = \"k\"\nhandshake_timeout = \"0s\"", true, "`admin.tls.handshake_timeout`"),
        ] {
            let tls: TlsConfig = toml::from_str(text).unwrap();
            let err = tls.validate(admin, path).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(toml::from_str::<TlsConfig>("cert = \"c\"\nkey = \"k\"\nclient_auth = \"sometimes\"").is_err());
        assert!(toml::from_str::<TlsConfig>("cert = \"c\"\nkey = \"k\"\nciphers = []").is_err());
    }
}

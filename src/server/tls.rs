//! TLS termination with rustls (ring), for the HTTP, gRPC and admin listeners.
//!
//! A [`TlsSource`] holds the certificate, key and client-CA files of one `[server.tls]` or `[admin.tls]` table, built
//! into rustls server configurations. Every `reload_interval` the files are read again; when their contents changed, new
//! configurations are built and swapped in, so new connections get the new certificate while open ones keep theirs.
//! A replacement that does not load (a half-written file, a key that does not match) is logged and counted, and the
//! previous certificate stays in use.

use crate::config::{ClientAuth, TlsConfig};
use crate::metrics::{catalogue, Metrics};
use parking_lot::{Mutex, RwLock};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// A TLS file that is missing, unreadable or unusable. Names the config key and the file.
#[derive(Debug, thiserror::Error)]
#[error("`{key}` ({}): {message}", path.display())]
pub struct TlsError {
    pub key: String,
    pub path: PathBuf,
    pub message: String,
}

/// Which application protocols a listener offers in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// The HTTP data port: HTTP/2 or HTTP/1.1, as the client prefers.
    Http,
    /// gRPC: HTTP/2 only.
    Grpc,
    /// The admin port: HTTP/1.1 only.
    Http1,
}

impl Alpn {
    fn protocols(self) -> Vec<Vec<u8>> {
        match self {
            Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::Grpc => vec![b"h2".to_vec()],
            Alpn::Http1 => vec![b"http/1.1".to_vec()],
        }
    }
}

/// The files' contents, as last read.
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl Files {
    fn fingerprint(&self) -> blake3::Hash {
        let mut h = blake3::Hasher::new();
        for part in [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()] {
            match part {
                Some(bytes) => h.update(&(bytes.len() as u64).to_le_bytes()).update(bytes),
                None => h.update(b"none"),
            };
        }
        h.finalize()
    }
}

/// The configurations built from one set of files, one per ALPN offer.
struct Built {
    fingerprint: blake3::Hash,
    http: Arc<ServerConfig>,
    grpc: Arc<ServerConfig>,
    http1: Arc<ServerConfig>,
}

/// One TLS table's certificate material, reloadable.
pub struct TlsSource {
    settings: TlsConfig,
    /// `server.tls` or `admin.tls`, for messages.
    table: &'static str,
    current: RwLock<Arc<Built>>,
    /// The fingerprint of files that failed to load, so a broken replacement is reported once, not every interval.
    failed: Mutex<Option<blake3::Hash>>,
}

impl TlsSource {
    /// Reads and checks the files of `[server.tls]` (or, with `admin`, `[admin.tls]`): missing files, PEM without a
    /// certificate or key, a key that does not match the certificate and an unusable client CA are errors naming the key.
    pub fn load(settings: &TlsConfig, admin: bool) -> Result<Arc<TlsSource>, TlsError> {
        let table = if admin { "admin.tls" } else { "server.tls" };
        let files = read_files(settings, table)?;
        let built = build(settings, table, &files)?;
        Ok(Arc::new(TlsSource { settings: settings.clone(), table, current: RwLock::new(Arc::new(built)), failed: Mutex::new(None) }))
    }

    /// The configuration new connections get.
    pub fn server_config(&self, alpn: Alpn) -> Arc<ServerConfig> {
        let built = self.current.read();
        match alpn {
            Alpn::Http => built.http.clone(),
            Alpn::Grpc => built.grpc.clone(),
            Alpn::Http1 => built.http1.clone(),
        }
    }

    /// How long a handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Whether clients must show a certificate.
    pub fn client_auth(&self) -> Option<ClientAuth> {
        self.settings.client_auth()
    }

    /// Reads the files again. `Ok(true)`: they changed and the new certificate is in use; `Ok(false)`: unchanged (or
    /// the same broken replacement as last time); `Err`: they changed and do not load, the previous certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = read_files(&self.settings, self.table)?;
        let fingerprint = files.fingerprint();
        if fingerprint == self.current.read().fingerprint || *self.failed.lock() == Some(fingerprint) {
            return Ok(false);
        }
        match build(&self.settings, self.table, &files) {
            Ok(built) => {
                *self.current.write() = Arc::new(built);
                *self.failed.lock() = None;
                Ok(true)
            }
            Err(e) => {
                *self.failed.lock() = Some(fingerprint);
                Err(e)
            }
        }
    }

    /// Checks the files every `reload_interval` until `stop` resolves (nothing when the interval is 0). `listener`
    /// labels the reload metric (`data` or `admin`).
    pub fn spawn_reloader(
        self: &Arc<Self>,
        listener: &'static str,
        metrics: &Metrics,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<std::io::Result<()>>> {
        let interval = self.settings.reload_interval;
        if interval.is_zero() {
            return None;
        }
        let ok = metrics.counter(catalogue::TLS_RELOADS, &[("listener", listener), ("result", "ok")]);
        let failed = metrics.counter(catalogue::TLS_RELOADS, &[("listener", listener), ("result", "failed")]);
        let source = self.clone();
        Some(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                tokio::select! {
                    _ = &mut stop => return Ok(()),
                    _ = ticks.tick() => {}
                }
                let checking = source.clone();
                match tokio::task::spawn_blocking(move || checking.reload()).await {
                    Ok(Ok(true)) => {
                        ok.increment(1);
                        tracing::info!(table = source.table, cert = %source.settings.cert.display(), "TLS certificate reloaded; new connections use it");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        failed.increment(1);
                        tracing::warn!(error = %e, "the new TLS files do not load; still serving the previous certificate");
                    }
                    Err(e) => tracing::warn!(error = %e, "TLS reload check failed"),
                }
            }
        }))
    }
}

fn read_files(settings: &TlsConfig, table: &'static str) -> Result<Files, TlsError> {
    let read = |field: &str, path: &Path| {
        std::fs::read(path).map_err(|e| TlsError { key: format!("{table}.{field}"), path: path.into(), message: format!("cannot read it: {e}") })
    };
    Ok(Files {
        cert: read("cert", &settings.cert)?,
        key: read("key", &settings.key)?,
        client_ca: settings.client_ca.as_deref().map(|p| read("client_ca", p)).transpose()?,
    })
}

fn build(settings: &TlsConfig, table: &'static str, files: &Files) -> Result<Built, TlsError> {
    let err = |field: &str, path: &Path, message: String| TlsError { key: format!("{table}.{field}"), path: path.into(), message };
    let certs = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("cert", &settings.cert, format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(err("cert", &settings.cert, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&files.key)
        .map_err(|e| err("key", &settings.key, format!("holds no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("cert", &settings.cert, format!("TLS set-up: {e}")))?;
    let builder = match (&files.client_ca, settings.client_ca.as_deref()) {
        (Some(pem), Some(path)) => {
            let mut roots = RootCertStore::empty();
            let cas = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| err("client_ca", path, format!("not PEM certificates: {e}")))?;
            if cas.is_empty() {
                return Err(err("client_ca", path, "holds no PEM certificate".into()));
            }
            for ca in cas {
                roots.add(ca).map_err(|e| err("client_ca", path, format!("not a usable CA certificate: {e}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match settings.client_auth() {
                Some(ClientAuth::Optional) => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            let verifier = verifier.build().map_err(|e| err("client_ca", path, format!("cannot verify client certificates with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let base = builder.with_single_cert(certs, key).map_err(|e| {
        let message = match e {
            rustls::Error::InconsistentKeys(_) => "does not match the certificate's public key".to_string(),
            other => format!("cannot be used with the certificate: {other}"),
        };
        err("key", &settings.key, message)
    })?;
    let with_alpn = |alpn: Alpn| {
        let mut config = base.clone();
        config.alpn_protocols = alpn.protocols();
        Arc::new(config)
    };
    Ok(Built { fingerprint: files.fingerprint(), http: with_alpn(Alpn::Http), grpc: with_alpn(Alpn::Grpc), http1: with_alpn(Alpn::Http1) })
}

//! Publishes the scaling signal to OCI Monitoring as custom metrics (`PostMetricData`), so OCI Autoscaling (or an
//! alarm) can act on it.
//!
//! # What is posted
//!
//! Every `[scaling.oci] interval` one datapoint per stream, in `namespace` and `compartment_id`:
//!
//! | metric | dimension `model` | unit |
//! |---|---|---|
//! | `desired_replicas` | each model, and `_all` for the sum over models | replicas |
//! | `queue_requests`, `in_flight` | each model | requests |
//! | `arrival_rate` | each model | requests/second |
//! | `busy_ratio` | each model | ratio (0..1) |
//!
//! Every stream also has the dimension `instance` (the host name: `/proc/sys/kernel/hostname`, else `$HOSTNAME`, else
//! `sluice`) and the configured extra `dimensions`. Summing `desired_replicas{model="_all"}` over instances gives the
//! fleet size wanted.
//!
//! # Credentials
//!
//! API-key request signing with the profile of an OCI config file (see [`config`]); everything is checked when the
//! server starts ([`start`] fails with an [`OciError`] naming the file, key and problem), so a bad setup is found at
//! deploy time, not by missing metrics.
//!
//! # Delivery
//!
//! Datapoints wait in a bounded buffer ([`buffer`]); a post carries at most 50 streams ([`payload`]); 429, 5xx,
//! timeouts and connection errors are retried with jittered exponential backoff; other 4xx answers drop the batch
//! ([`publisher`]). Progress shows in `sluice_oci_posts_total{outcome}`, `sluice_oci_datapoints_dropped_total{reason}`
//! and `sluice_oci_buffered_datapoints`. The default endpoint is the commercial realm's
//! `https://telemetry-ingestion.{region}.oraclecloud.com`; other realms need `endpoint`.

pub mod buffer;
pub mod client;
pub mod config;
pub mod payload;
pub mod publisher;
pub mod signer;

use crate::config::OciMonitoringConfig;
use crate::metrics::Metrics;
use crate::scaling::ScalingSnapshot;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why the publisher cannot start. Each message names the file, key or setting at fault.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI Monitoring ([scaling.oci]): no OCI config file: HOME is not set, so ~/.oci/config cannot be found; set [scaling.oci] config_file or OCI_CONFIG_FILE")]
    NoConfigFile,
    #[error("OCI Monitoring ([scaling.oci]): cannot read the OCI config file {}: {source} (set [scaling.oci] config_file or OCI_CONFIG_FILE)", path.display())]
    ConfigFile { path: PathBuf, source: std::io::Error },
    #[error("OCI Monitoring ([scaling.oci]): OCI config file {}, line {line}: {message}", path.display())]
    ConfigSyntax { path: PathBuf, line: usize, message: String },
    #[error("OCI Monitoring ([scaling.oci]): profile [{profile}] not found in the OCI config file {} (it has: {available}); set [scaling.oci] profile", path.display())]
    Profile { path: PathBuf, profile: String, available: String },
    #[error("OCI Monitoring ([scaling.oci]): profile [{profile}] of the OCI config file {} lacks {keys} (API-key auth needs user, fingerprint, key_file and tenancy)", path.display())]
    MissingKeys { path: PathBuf, profile: String, keys: String },
    #[error("OCI Monitoring ([scaling.oci]): {key} in profile [{profile}] of the OCI config file {}: {message}", path.display())]
    BadValue { path: PathBuf, profile: String, key: String, message: String },
    #[error("OCI Monitoring ([scaling.oci]): no region: set region in profile [{profile}] of the OCI config file {}, or [scaling.oci] region or endpoint", path.display())]
    NoRegion { path: PathBuf, profile: String },
    #[error("OCI Monitoring ([scaling.oci]): cannot read the API signing key file {} (key_file of {origin}): {source}", path.display())]
    KeyFile { path: PathBuf, origin: String, source: std::io::Error },
    #[error("OCI Monitoring ([scaling.oci]): API signing key file {} (key_file of {origin}): {message}", path.display())]
    Key { path: PathBuf, origin: String, message: String },
    #[error("OCI Monitoring ([scaling.oci]): region '{region}' {message}")]
    Region { region: String, message: String },
    #[error("OCI Monitoring ([scaling.oci]): endpoint '{endpoint}' {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("OCI Monitoring ([scaling.oci]): {setting} {message}")]
    Setting { setting: String, message: String },
    #[error("OCI Monitoring ([scaling.oci]): cannot set up TLS: {0}")]
    Tls(String),
}

/// Dimensions every stream gets; configured `dimensions` may not reuse them.
const RESERVED_DIMENSIONS: [&str; 2] = ["model", "instance"];

/// OCI allows 1 to 20 dimensions per stream.
const MAX_DIMENSIONS: usize = 20;

/// Checks the configuration and credentials, then starts the publisher task; it ends when `stop` resolves.
/// Must be called within a tokio runtime.
pub fn start(
    config: &OciMonitoringConfig,
    scaling: watch::Receiver<Arc<ScalingSnapshot>>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<std::io::Result<()>>, OciError> {
    check_dimensions(&config.dimensions)?;
    if let Some(group) = &config.resource_group {
        check_resource_group(group)?;
    }
    let path = config::config_file_path(config.config_file.as_deref())?;
    let profile = config::load_profile(&path, &config.profile)?;
    let origin = format!("profile [{}] in {}", config.profile, path.display());
    let key = config::load_key(&profile.key_file, &origin)?;
    let region = config
        .region
        .clone()
        .or_else(|| profile.region.clone())
        .or_else(|| std::env::var("OCI_REGION").ok().filter(|r| !r.trim().is_empty()));
    let endpoint = client::Endpoint::resolve(config.endpoint.as_deref(), region.as_deref().map(str::trim))
        .ok_or_else(|| OciError::NoRegion { path: path.clone(), profile: config.profile.clone() })??;
    if endpoint.url.scheme_str() == Some("http") {
        tracing::warn!(endpoint = %endpoint.url, "[scaling.oci] endpoint is plain http: only meant for a local test receiver");
    }
    let signer = signer::Signer::new(profile.key_id(), key);
    let client = client::Client::new(endpoint, signer, config.timeout)?;
    let mut dimensions = config.dimensions.clone();
    dimensions.insert("instance".to_string(), instance_name());
    let context = payload::StreamContext {
        namespace: config.namespace.clone(),
        compartment_id: config.compartment_id.trim().to_string(),
        resource_group: config.resource_group.clone(),
        dimensions,
    };
    tracing::info!(
        endpoint = %client.endpoint().url,
        profile = %config.profile,
        config_file = %path.display(),
        namespace = %context.namespace,
        instance = %context.dimensions.get("instance").map_or("", String::as_str),
        interval = ?config.interval,
        "publishing the scaling signal to OCI Monitoring"
    );
    let publisher = publisher::Publisher::new(client, context, config.interval, config.max_buffered_datapoints, &metrics);
    Ok(tokio::spawn(publisher.run(scaling, stop)))
}

/// OCI's rules for dimensions: key printable ASCII without spaces, ≤ 256 characters; value ≤ 512 characters; neither
/// empty; 1–20 per stream (we add `model` and `instance`).
fn check_dimensions(dimensions: &BTreeMap<String, String>) -> Result<(), OciError> {
    let bad = |key: &str, message: String| OciError::Setting { setting: format!("dimensions.{key}"), message };
    if dimensions.len() + RESERVED_DIMENSIONS.len() > MAX_DIMENSIONS {
        return Err(OciError::Setting {
            setting: "dimensions".into(),
            message: format!("has {} entries; OCI allows {} per stream and Sluice adds model and instance", dimensions.len(), MAX_DIMENSIONS),
        });
    }
    for (key, value) in dimensions {
        if RESERVED_DIMENSIONS.contains(&key.as_str()) {
            return Err(bad(key, "is set by Sluice on every stream; choose another name".into()));
        }
        if key.is_empty() || key.len() > 256 || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(key, "must be 1 to 256 printable ASCII characters without spaces".into()));
        }
        if value.is_empty() || value.chars().count() > 512 {
            return Err(bad(key, "must have a value of 1 to 512 characters".into()));
        }
    }
    Ok(())
}

/// OCI's rule for resource groups: a letter first, then letters, digits, `.`, `_`, `-`, `$`; at most 255 characters.
fn check_resource_group(group: &str) -> Result<(), OciError> {
    let valid = group.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && group.len() <= 255
        && group.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '$'));
    if valid {
        Ok(())
    } else {
        Err(OciError::Setting {
            setting: "resource_group".into(),
            message: format!("'{group}' must start with a letter and hold only letters, digits, '.', '_', '-' and '$' (at most 255)"),
        })
    }
}

/// The `instance` dimension: the host name (the pod name on Kubernetes), so each replica has its own streams.
fn instance_name() -> String {
    let from_proc = std::fs::read_to_string("/proc/sys/kernel/hostname").ok();
    let from_env = || std::env::var("HOSTNAME").ok();
    from_proc
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| from_env().map(|h| h.trim().to_string()).filter(|h| !h.is_empty()))
        .map(|h| h.chars().take(512).collect())
        .unwrap_or_else(|| "sluice".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimension_and_resource_group_rules() {
        let dims = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        assert!(check_dimensions(&dims(&[("pool", "gpu-a10"), ("env", "prod")])).is_ok());
        for bad in [dims(&[("model", "x")]), dims(&[("instance", "x")]), dims(&[("a b", "x")]), dims(&[("", "x")]), dims(&[("k", "")])] {
            let err = check_dimensions(&bad).unwrap_err().to_string();
            assert!(err.contains("dimensions."), "{err}");
        }
        let many: BTreeMap<String, String> = (0..19).map(|i| (format!("k{i}"), "v".to_string())).collect();
        assert!(check_dimensions(&many).unwrap_err().to_string().contains("20"));
        assert!(check_resource_group("group-1.a$").is_ok());
        assert!(check_resource_group("1group").is_err());
        assert!(check_resource_group("a b").is_err());
        assert!(!instance_name().is_empty());
    }
}

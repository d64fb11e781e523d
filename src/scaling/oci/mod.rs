//! Publishes the scaling signal to OCI Monitoring (PostMetricData) for OCI Autoscaling. (Being written.)

use crate::config::OciMonitoringConfig;
use crate::metrics::Metrics;
use crate::scaling::ScalingSnapshot;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("OCI Monitoring publisher: {0}")]
    Setup(String),
}

/// Checks the configuration and credentials, then starts the publisher task; it ends when `stop` resolves.
pub fn start(
    config: &OciMonitoringConfig,
    scaling: watch::Receiver<Arc<ScalingSnapshot>>,
    metrics: Arc<Metrics>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<JoinHandle<std::io::Result<()>>, OciError> {
    let _ = (config, scaling, metrics);
    Ok(tokio::spawn(async move {
        stop.await;
        Ok(())
    }))
}

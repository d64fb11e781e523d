//! KEDA's external scaler (`externalscaler.ExternalScaler`) on its own gRPC listener. (Being written.)

use super::ScalingSnapshot;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// A bound scaler listener, not yet serving.
pub struct KedaServer {
    listener: tokio::net::TcpListener,
    #[allow(dead_code)]
    scaling: watch::Receiver<Arc<ScalingSnapshot>>,
}

impl KedaServer {
    pub async fn bind(addr: SocketAddr, scaling: watch::Receiver<Arc<ScalingSnapshot>>) -> std::io::Result<KedaServer> {
        Ok(KedaServer { listener: tokio::net::TcpListener::bind(addr).await?, scaling })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        shutdown.await;
        Ok(())
    }
}

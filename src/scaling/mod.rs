//! Scaling signals: the counters kept on the request path ([`load`]), the sampler that turns them into a desired
//! capacity ([`signal`]), and the places it is published: KEDA's external scaler ([`keda`]) and OCI Monitoring ([`oci`]).
//! `/scaling` and `/metrics` on the admin listener read the same snapshot.

pub mod keda;
pub mod load;
pub mod oci;
pub mod signal;

pub use load::LoadTracker;
pub use signal::{ModelSignal, ScalingSnapshot};

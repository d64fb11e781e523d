//! Admission: who may send what, and how fast — authentication by API key or bearer token, per-route scopes, and
//! per-tenant request-rate limits. (Queue-depth backpressure lives with each model's scheduler.)

pub mod auth;
pub mod token_bucket;

pub use auth::{AuthError, Authenticator, Plane, TenantName};

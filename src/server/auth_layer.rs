//! Authentication on every listener, one way: HTTP middleware for the data and admin routers, a tonic interceptor for
//! the gRPC services. The tenant goes into the request's extensions (for logs); a refusal is a V2 error body with
//! 401 (and `WWW-Authenticate: Bearer`), 403 or 429, or the gRPC status UNAUTHENTICATED, PERMISSION_DENIED or
//! RESOURCE_EXHAUSTED.

use crate::admission::auth::credential;
use crate::admission::{Authenticator, Plane, TenantName};
use crate::protocol::ApiError;
use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The tenant whose key `headers` carry, when it may use `plane`.
pub fn authenticate(auth: &Authenticator, headers: &HeaderMap, plane: Plane) -> Result<TenantName, crate::admission::AuthError> {
    auth.check(credential(header(headers, "authorization"), header(headers, "x-api-key")), plane)
}

async fn admit(auth: &Authenticator, plane: Plane, mut request: Request, next: Next) -> Response {
    match authenticate(auth, request.headers(), plane) {
        Ok(tenant) => {
            request.extensions_mut().insert(tenant);
            next.run(request).await
        }
        Err(err) => {
            tracing::debug!(path = %request.uri().path(), error = %err, "request refused by authentication");
            ApiError::from(err).into_response()
        }
    }
}

/// Data-plane routes: a key with the `infer` scope (and within its tenant's rate).
pub async fn require_data(State(auth): State<Arc<Authenticator>>, request: Request, next: Next) -> Response {
    admit(&auth, Plane::Data, request, next).await
}

/// Admin routes: a key with the `admin` scope.
pub async fn require_admin(State(auth): State<Arc<Authenticator>>, request: Request, next: Next) -> Response {
    admit(&auth, Plane::Admin, request, next).await
}

/// The tenant name for log lines ("-" without authentication).
pub fn tenant_of(extensions: &axum::http::Extensions) -> Arc<str> {
    static ANONYMOUS: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| Arc::from("-"));
    extensions.get::<TenantName>().map_or_else(|| ANONYMOUS.clone(), |t| t.0.clone())
}

/// A tonic interceptor for the data-plane gRPC services; admits everything when authentication is off.
#[derive(Clone)]
pub struct GrpcAuth(pub Option<Arc<Authenticator>>);

impl tonic::service::Interceptor for GrpcAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(auth) = &self.0 else { return Ok(request) };
        let metadata = request.metadata();
        let value = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
        match auth.check(credential(value("authorization"), value("x-api-key")), Plane::Data) {
            Ok(tenant) => {
                request.extensions_mut().insert(tenant);
                Ok(request)
            }
            Err(err) => {
                let api = ApiError::from(err);
                let mut status = tonic::Status::from(api.clone());
                if let Some(after) = api.retry_after {
                    if let Ok(value) = after.as_secs().max(1).to_string().parse() {
                        status.metadata_mut().insert("retry-after", value);
                    }
                }
                Err(status)
            }
        }
    }
}

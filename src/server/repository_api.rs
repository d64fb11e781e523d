//! Triton's model repository extension, on the admin port (it changes what the server serves, so it stays off the
//! data ports):
//!
//! - `POST /v2/repository/index` → `[{"name", "version", "state", "reason"}]`: every model and version the repository
//!   knows, `READY`, `LOADING`, `UNLOADING` or `UNAVAILABLE` (with the reason: a load failure, `unloaded`, not loaded
//!   yet). A body `{"ready": true}` lists only the `READY` ones.
//! - `POST /v2/repository/models/{m}/load` → loads or reloads the model from disk (new and changed versions, and
//!   versions that failed before), waits until it is loaded and warmed up, and answers `200 {}`; `400` with the reasons
//!   when a version failed (what served before keeps serving), `404` when there is no such model directory.
//! - `POST /v2/repository/models/{m}/unload` → the model is no longer served: new requests get `404`, running ones
//!   finish. The watcher leaves it alone until it is loaded again.
//!
//! Errors are V2 error bodies (`{"error": "..."}`). Models served by upstream pools cannot be loaded or unloaded here
//! (`400`). See docs/LIFECYCLE.md.

use crate::protocol::ApiError;
use crate::repository::{LoadError, Repository};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use serde_json::Value;
use std::sync::Arc;

/// The repository API's routes, for merging into a router of any state (the admin router).
pub fn router<S: Clone + Send + Sync + 'static>(repository: Arc<Repository>) -> Router<S> {
    Router::new()
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{model}/load", post(load))
        .route("/v2/repository/models/{model}/unload", post(unload))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(repository)
}

type Shared = State<Arc<Repository>>;

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not allowed on {} (the repository API takes POST)", uri.path()))
}

impl From<LoadError> for ApiError {
    fn from(err: LoadError) -> ApiError {
        let status = match &err {
            LoadError::NotFound(_) => StatusCode::NOT_FOUND,
            LoadError::Remote(_) | LoadError::NoVersions(_) | LoadError::Failed { .. } => StatusCode::BAD_REQUEST,
            LoadError::Read { .. } | LoadError::Interrupted(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, err.to_string())
    }
}

/// An optional JSON object body (Triton's clients send `{}` or `{"parameters": {...}}`).
fn body_object(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Default::default());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request("the request body must be a JSON object")),
        Err(e) => Err(ApiError::bad_request(format!("the request body is not valid JSON: {e}"))),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the answer: {e}")).into_response(),
    }
}

async fn index(State(repository): Shared, body: Bytes) -> Result<Response, ApiError> {
    let request = body_object(&body)?;
    let ready_only = match request.get("ready") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ApiError::bad_request("'ready' must be true or false")),
    };
    // The index lists the repository directory: off the async workers.
    let entries = tokio::task::spawn_blocking(move || repository.index())
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot list the repository: {e}")))?;
    let entries: Vec<_> = entries.into_iter().filter(|e| !ready_only || e.state == crate::repository::VersionState::Ready).collect();
    Ok(json(&entries))
}

async fn load(State(repository): Shared, Path(model): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    let request = body_object(&body)?;
    if let Some(Value::Object(parameters)) = request.get("parameters") {
        if let Some(key) = parameters.keys().find(|k| *k == "config" || k.starts_with("file:")) {
            return Err(ApiError::bad_request(format!(
                "load parameter '{key}' is not supported: Sluice loads models only from the repository directory (write the files there, then load)"
            )));
        }
    }
    // Its own task: a client that hangs up does not cut a load (and the table swap) in half.
    let task = tokio::spawn({
        let model = model.clone();
        async move { repository.load_model(&model).await }
    });
    task.await.map_err(|_| ApiError::from(LoadError::Interrupted(model)))??;
    Ok(json(&serde_json::json!({})))
}

async fn unload(State(repository): Shared, Path(model): Path<String>, body: Bytes) -> Result<Response, ApiError> {
    body_object(&body)?;
    repository.unload_model(&model).await?;
    Ok(json(&serde_json::json!({})))
}

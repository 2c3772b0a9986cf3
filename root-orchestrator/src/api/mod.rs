//! The REST API on `--api-addr` (default port 10000): Oakestra's paths, methods and shapes.
//!
//! - [`accounts`]: login, refresh, users, organisations;
//! - [`apps`]: applications, services, instances;
//! - [`clusters`]: the cluster list and the workers of every cluster;
//! - [`events`]: the change feed as server-sent events;
//! - [`logs`]: an instance's log streamed from its worker;
//! - [`dashboard`]: the web dashboard at `/` (its files built into the binary);
//! - [`docs`]: the OpenAPI document (generated from the types in [`views`]) and its page.
//!
//! Every path answers with and without a trailing slash. Errors are JSON
//! `{"message", "field"?, "problems"?}` with one mapping from [`control::Error`] to a status
//! ([`ApiError`]); the framework's own (unknown path, wrong method, bad path parameter) are
//! rewritten to that shape. Request bodies are checked against the OpenAPI document before
//! they are read ([`Body`]), so the document is what the API accepts. Nothing but login,
//! refresh, `/health`, the docs and the dashboard's files is reachable without a bearer
//! access token.

pub mod accounts;
pub mod apps;
pub mod clusters;
pub mod dashboard;
pub mod docs;
pub mod events;
pub mod jobs;
pub mod logs;
pub mod views;

use crate::auth::{TokenKeys, TokenType};
use crate::control::{self, Caller, Root};
use axum::extract::{FromRequest, FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use views::{ErrorBody, ProblemView};

/// What every handler gets.
#[derive(Clone)]
pub struct ApiState {
    pub root: Arc<Root>,
    pub keys: TokenKeys,
    /// Request bodies above this are refused with 413 before they are read whole.
    pub max_body_bytes: usize,
    /// Services as the API shows them, kept per instance.
    pub jobs: Arc<jobs::JobDocs>,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                message: message.into(),
                field: None,
                problems: Vec::new(),
            },
        }
    }

    pub fn field(status: StatusCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        let field = field.into();
        let message = message.into();
        ApiError {
            status,
            body: ErrorBody {
                message: format!("{field}: {message}"),
                field: Some(field),
                problems: Vec::new(),
            },
        }
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<control::Error> for ApiError {
    fn from(e: control::Error) -> Self {
        use control::Error as E;
        match e {
            E::NotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            E::Conflict { field, message } => ApiError::field(StatusCode::CONFLICT, field, message),
            E::Unprocessable { field, message } => {
                ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, message)
            }
            E::BadRequest { field, message } => {
                ApiError::field(StatusCode::BAD_REQUEST, field, message)
            }
            E::BadCredentials => ApiError::unauthorized("invalid username or password"),
            E::Forbidden => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
            E::QuotaExceeded { field, message } => {
                ApiError::field(StatusCode::FORBIDDEN, field, message)
            }
            E::Store(_) | E::Auth(_) => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON body of type `T`. Any content type is accepted (Oakestra's clients are not strict).
/// The body must fit the schema the OpenAPI document gives `T` (so a JSON array is no object,
/// and every documented rule holds), then serde reads it; either failing answers 400 naming
/// the first field at fault, every problem listed.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned + utoipa::ToSchema, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (bytes, value) = read_json(req, state).await?;
        let problems = docs::body_problems(&T::name(), &value).unwrap_or_default();
        if let Some(first) = problems.first() {
            let field = if first.path == "$" {
                "body"
            } else {
                first.path.as_str()
            };
            let mut e = ApiError::field(StatusCode::BAD_REQUEST, field, first.message.clone());
            e.body.problems = problem_views(problems);
            return Err(e);
        }
        parse_body(&bytes).map(Body)
    }
}

/// Problems found in a body (against its schema, or as an SLA), as an error lists them.
pub fn problem_views(problems: Vec<canopy_sla::Problem>) -> Vec<ProblemView> {
    problems
        .into_iter()
        .map(|p| ProblemView {
            path: p.path,
            message: p.message,
        })
        .collect()
}

/// An SLA document as sent: any JSON object, which the handler validates as an SLA (422 with
/// every problem); anything else is 400.
pub struct SlaBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for SlaBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let (_, value) = read_json(req, state).await?;
        if !value.is_object() {
            return Err(ApiError::field(
                StatusCode::BAD_REQUEST,
                "body",
                "must be a JSON object (an SLA document)",
            ));
        }
        Ok(SlaBody(value))
    }
}

/// A request's body, whole (413 above `--max-body-bytes`), and as JSON (400 if it is not).
async fn read_json<S: Send + Sync>(
    req: Request,
    state: &S,
) -> ApiResult<(axum::body::Bytes, serde_json::Value)> {
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| {
            // Over `--max-body-bytes`: 413; anything else about reading it: 400.
            let status = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            ApiError::field(status, "body", e.body_text())
        })?;
    // One JSON value, then nothing but white space (`parse_body` alone stops after the value).
    let value = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::field(
            StatusCode::BAD_REQUEST,
            "body",
            format!("not valid JSON: {e}"),
        )
    })?;
    Ok((bytes, value))
}

/// Decodes a JSON body, naming the field at fault.
pub fn parse_body<T: DeserializeOwned>(bytes: &[u8]) -> ApiResult<T> {
    canopy_daemon::json_body(bytes)
        .map_err(|e| ApiError::field(StatusCode::BAD_REQUEST, e.field, e.message))
}

fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("Missing authentication token"))?;
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| ApiError::unauthorized("Authorization must be 'Bearer <token>'"))?;
    Ok(token.trim())
}

/// Verifies a bearer token of the given type and returns its claims.
pub fn verify_token(
    keys: &TokenKeys,
    headers: &HeaderMap,
    want: TokenType,
) -> ApiResult<crate::auth::Claims> {
    let claims = keys
        .verify(bearer(headers)?)
        .map_err(|e| ApiError::unauthorized(format!("invalid token: {e}")))?;
    if claims.token_type != want {
        return Err(ApiError::unauthorized(match want {
            TokenType::Access => "Only access token allowed",
            TokenType::Refresh => "Only refresh token allowed",
        }));
    }
    Ok(claims)
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &ApiState) -> Result<Self, ApiError> {
        let claims = verify_token(&state.keys, &parts.headers, TokenType::Access)?;
        state
            .root
            .caller(&claims)
            .await
            .ok_or_else(|| ApiError::unauthorized("the token's user no longer exists"))
    }
}

async fn count_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let response = next.run(req).await;
    state
        .root
        .metrics
        .request(&method, &route, response.status().as_u16());
    response
}

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Every error answer is an [`ErrorBody`]: those the framework makes itself as text (a path
/// parameter that is not UTF-8, a query that does not fit, a method the path lacks: 405 with
/// `Allow`) are rewritten, keeping their status and headers.
async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json || !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_lowercase()
    } else {
        text
    };
    parts.headers.remove(header::CONTENT_TYPE);
    parts.headers.remove(header::CONTENT_LENGTH);
    let (json, body) = ApiError::new(status, message).into_response().into_parts();
    parts.headers.extend(json.headers);
    Response::from_parts(parts, body)
}

/// The API's routes (paths without trailing slash; [`service`] adds the slash-less rewrite).
pub fn router(state: ApiState) -> Router {
    use accounts as ac;
    use apps as ap;
    Router::new()
        .route("/api/auth/login", post(ac::login))
        .route("/api/auth/refresh", post(ac::refresh))
        .route("/api/auth/register", post(ac::register))
        .route("/api/permission/{username}", get(ac::permission))
        .route(
            "/api/user/{username}",
            get(ac::get_user)
                .post(ac::change_password)
                .put(ac::update_user)
                .delete(ac::delete_user),
        )
        .route(
            "/api/user/{username}/quota",
            get(ac::get_quota)
                .put(ac::put_quota)
                .delete(ac::delete_quota),
        )
        .route("/api/users", get(ac::list_users))
        .route(
            "/api/organization",
            get(ac::list_organizations).post(ac::create_organization),
        )
        .route(
            "/api/organization/{id}",
            axum::routing::put(ac::update_organization).delete(ac::delete_organization),
        )
        .route("/api/application", post(ap::create_applications))
        .route(
            "/api/application/{id}",
            get(ap::get_application)
                .put(ap::update_application)
                .delete(ap::delete_application),
        )
        .route("/api/applications", get(ap::list_applications))
        .route(
            "/api/applications/{userid}",
            get(ap::list_user_applications),
        )
        .route("/api/service", post(ap::add_services))
        .route(
            "/api/service/{id}",
            get(ap::get_service)
                .put(ap::update_service)
                .delete(ap::delete_service),
        )
        .route("/api/services", get(ap::list_all_services))
        .route("/api/services/{appid}", get(ap::list_services))
        .route("/api/service/{id}/instance", post(ap::scale_up))
        .route("/api/service/{id}/events", get(ap::service_events))
        .route("/api/service/{id}/rollout", get(ap::rollout_status))
        .route("/api/service/{id}/instance/{n}", delete(ap::scale_down))
        .route("/api/service/{id}/instance/{n}/logs", get(logs::stream))
        .route(
            "/api/service/{id}/instance/{n}/{operation}",
            post(ap::operate),
        )
        .route("/api/clusters", get(clusters::list_clusters))
        .route("/api/clusters/active", get(clusters::list_active_clusters))
        .route("/api/nodes", get(clusters::list_nodes))
        .route("/api/events", get(events::stream))
        .route("/health", get(health))
        .route("/docs/openapi.json", get(docs::openapi_json))
        .route("/api/docs", get(docs::page))
        .merge(dashboard::router())
        .fallback(no_route)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(middleware::from_fn(json_errors))
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(state)
}

/// The router wrapped so that `/x/` and `/x` are the same path, ready for `axum::serve`.
pub fn service(
    state: ApiState,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<
    tower_http::normalize_path::NormalizePath<Router>,
    std::net::SocketAddr,
> {
    use tower::Layer;
    let app =
        tower_http::normalize_path::NormalizePathLayer::trim_trailing_slash().layer(router(state));
    axum::ServiceExt::<Request>::into_make_service_with_connect_info::<std::net::SocketAddr>(app)
}

//! Every error the server sends has one shape:
//! `{"error":{"code":"...","message":"..."}}` with a fitting 4xx status.
//! Internal causes are logged, never sent: a client sees `internal` and a
//! request id to quote.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use kyu_core::ValidationError;
use kyu_store::StoreError;
use serde::de::DeserializeOwned;
use serde_json::json;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with a status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// 400: the request could not be read.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 422: readable, but a field is not acceptable.
    pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", format!("{field}: {message}"))
    }

    /// 404.
    pub fn not_found(what: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message}});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> ApiError {
        if e.too_large {
            return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string());
        }
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string())
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::NotFound(what) => ApiError::not_found(what),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            StoreError::Invalid(v) => v.into(),
            StoreError::Denied { code, message } => {
                let status = if code == "forbidden" { StatusCode::FORBIDDEN } else { StatusCode::UNAUTHORIZED };
                ApiError::new(status, code, message)
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "store unavailable");
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the store is busy or unreachable; retry")
            }
            other => {
                tracing::error!(error = %other, "store error");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error (logged on the server)")
            }
        }
    }
}

/// `axum::Json`, with rejections in kyu's error shape: malformed JSON is a
/// 400, JSON of the wrong shape a 422, a body over the limit a 413.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid",
                format!("the JSON does not fit: {}", e.body_text().trim_start_matches("Failed to deserialize the JSON body into the target type: ")),
            )),
            Err(JsonRejection::MissingJsonContentType(_)) => {
                Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_request", "send Content-Type: application/json"))
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is over the server's limit",
            )),
            Err(e) => Err(ApiError::bad_request(format!("the body is not valid JSON: {}", e.body_text()))),
        }
    }
}

/// An optional JSON body: an empty body is `None`; anything else must be
/// JSON of the right shape, with [`Json`]'s errors.
pub struct OptionalJson<T>(pub Option<T>);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
            || (req.headers().get(axum::http::header::CONTENT_LENGTH).is_none()
                && req.headers().get(axum::http::header::TRANSFER_ENCODING).is_none());
        if empty {
            return Ok(OptionalJson(None));
        }
        Json::<T>::from_request(req, state).await.map(|Json(v)| OptionalJson(Some(v)))
    }
}

/// `axum::extract::Query` with rejections as 400s in kyu's shape.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| ApiError::bad_request(format!("bad query string: {}", e.body_text())))
    }
}

/// `axum::extract::Path` with rejections as 400s in kyu's shape.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e: PathRejection| ApiError::bad_request(format!("bad path: {}", e.body_text())))
    }
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

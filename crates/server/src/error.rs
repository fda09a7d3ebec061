//! API errors: a stable machine-readable `code`, an HTTP status that says
//! whose fault it is, and a message that says what to do about it.

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use factory_core::transitions::TransitionError;
use factory_engine::EngineError;
use factory_store::StoreError;
use serde_json::json;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Each reason, when there are several (a run that cannot be created).
    pub problems: Vec<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            problems: Vec::new(),
        }
    }

    /// This error with its reasons listed one by one.
    pub fn with_problems(mut self, problems: Vec<String>) -> ApiError {
        self.problems = problems;
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> ApiError {
        tracing::error!(%message, "internal error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {message}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = if self.problems.is_empty() {
            json!({ "error": { "code": self.code, "message": self.message } })
        } else {
            json!({ "error": { "code": self.code, "message": self.message, "problems": self.problems } })
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        match &error {
            StoreError::RunNotFound(_) => ApiError::not_found(
                "run_not_found",
                format!("{error}; list runs with GET /api/v1/runs"),
            ),
            StoreError::AmbiguousRunId { .. } => {
                ApiError::bad_request("ambiguous_run_id", format!("{error}; give more characters"))
            }
            StoreError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            StoreError::BlobNotFound(_) => ApiError::not_found("blob_not_found", error.to_string()),
            _ if error.is_unavailable() => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!(
                    "the store cannot be reached ({error}); nothing was changed, try again shortly"
                ),
            ),
            _ => ApiError::internal(error),
        }
    }
}

impl From<TransitionError> for ApiError {
    fn from(error: TransitionError) -> ApiError {
        let message = error.to_string();
        match error {
            TransitionError::UnknownBlock(_) => ApiError::not_found("unknown_block", message),
            TransitionError::NotWaiting { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_waiting", message)
            }
            TransitionError::NotReady { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_ready", message)
            }
            TransitionError::NotRetryable { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_retryable", message)
            }
            TransitionError::DependentRunning { .. } => {
                ApiError::new(StatusCode::CONFLICT, "dependent_running", message)
            }
            TransitionError::StaleAttempt { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stale_attempt", message)
            }
            TransitionError::EmptyFeedback => ApiError::unprocessable("empty_feedback", message),
            TransitionError::SelfApproval { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "self_approval", message)
            }
            TransitionError::GuardedGate { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "separate_reviewer", message)
            }
            TransitionError::SameAutonomy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "same_autonomy", message)
            }
        }
    }
}

/// Where a server's provider settings come from, for errors about them.
pub const SERVER_SETTINGS: &str = "Provider keys and URLs are read from the environment (and factory.toml) of the process that runs `factory serve`: set them there and restart it; `factory doctor TEMPLATE` on that machine checks them.";

impl From<EngineError> for ApiError {
    fn from(error: EngineError) -> ApiError {
        match error {
            EngineError::Transition(error) => error.into(),
            EngineError::Store(error) => error.into(),
            EngineError::InvalidTemplate(_) => {
                ApiError::unprocessable("invalid_template", error.to_string())
            }
            EngineError::CreateRun(ref create) if !create.guarded.is_empty() => ApiError::new(
                StatusCode::FORBIDDEN,
                "separate_reviewer",
                error.to_string(),
            ),
            EngineError::CreateRun(create) => {
                let message = match create.problems.as_slice() {
                    [one] => one.clone(),
                    many => format!("the run cannot be created ({} problems)", many.len()),
                };
                ApiError::unprocessable("invalid_run_request", message)
                    .with_problems(create.problems)
            }
            EngineError::LlmSetup(problems) => ApiError::unprocessable(
                "llm_not_configured",
                format!(
                    "blocks of this run cannot run here ({} problem{}). {SERVER_SETTINGS}",
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                ),
            )
            .with_problems(problems),
            EngineError::MissingGolden(_) => {
                ApiError::unprocessable("missing_golden", error.to_string())
            }
            EngineError::TooManyConflicts { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                format!("{error}; try again"),
            ),
            EngineError::Apply(_) | EngineError::Emit(_) => ApiError::internal(error),
            EngineError::BadReview(_) => ApiError::unprocessable("bad_review", error.to_string()),
            EngineError::BadRating(_) => ApiError::unprocessable("bad_rating", error.to_string()),
            EngineError::Gap(ref decision) => match decision {
                factory_core::gaps::DecisionError::Unknown(_) => {
                    ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
                }
                factory_core::gaps::DecisionError::Unchanged { .. } => {
                    ApiError::new(StatusCode::CONFLICT, "unchanged", error.to_string())
                }
                _ => ApiError::unprocessable("bad_gap_decision", error.to_string()),
            },
            EngineError::Chat(ref chat) => match chat {
                factory_engine::chat::ChatError::EmptyMessage => {
                    ApiError::unprocessable("empty_message", error.to_string())
                }
                factory_engine::chat::ChatError::NotConfigured(_) => {
                    ApiError::unprocessable("llm_not_configured", error.to_string())
                }
                factory_engine::chat::ChatError::Provider(_) => {
                    ApiError::new(StatusCode::BAD_GATEWAY, "llm_error", error.to_string())
                }
            },
            EngineError::BadDelivery(_) => {
                ApiError::unprocessable("bad_delivery", error.to_string())
            }
            EngineError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                error.to_string(),
            ),
            EngineError::StreamTemplate(_) => {
                ApiError::unprocessable("stream_template", error.to_string())
            }
            EngineError::RecordNotFailed { .. } => {
                ApiError::new(StatusCode::CONFLICT, "not_failed", error.to_string())
            }
            EngineError::NotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", error.to_string())
            }
        }
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s naming the bad field.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => {
                let (status, code) = match &rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "not_json")
                    }
                    JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "bad_json"),
                    JsonRejection::JsonDataError(_) => {
                        (StatusCode::UNPROCESSABLE_ENTITY, "bad_request_body")
                    }
                    _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                        (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large")
                    }
                    _ => (StatusCode::BAD_REQUEST, "bad_request_body"),
                };
                let hint = match code {
                    "not_json" => NOT_JSON_HINT,
                    "body_too_large" => TOO_LARGE_HINT,
                    _ => "; see /api/v1/openapi.json for the request shape",
                };
                Err(ApiError::new(
                    status,
                    code,
                    format!("{}{hint}", rejection.body_text()),
                ))
            }
        }
    }
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(
        "no_such_route",
        format!(
            "nothing at `{}`; the API is under /api/v1 (see /api/v1/openapi.json), the workbench at /",
            uri.path()
        ),
    )
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What to do about a body that is not JSON, or over the limit (also said by
/// `guard::shape_errors` for axum's own rejections).
pub const NOT_JSON_HINT: &str = "; send the body with `content-type: application/json`";
pub const TOO_LARGE_HINT: &str = "; the request body is over this route's limit (see `factory serve --help` for the upload limits)";

/// For handlers that read the body as bytes: a body must come as JSON (a
/// form or `text/plain` post is what a page on another site can send).
pub fn require_json(headers: &axum::http::HeaderMap, body: &[u8]) -> ApiResult<()> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(());
    }
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        });
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not_json",
            "the body must be JSON: send it with `content-type: application/json`",
        ))
    }
}

//! Browser-facing defences every response and request passes through:
//! a state-changing request from another site is refused (in `--no-auth`
//! mode and for cookie sessions nothing else would stop a page elsewhere
//! from approving a gate), and every response carries a strict
//! Content-Security-Policy and `nosniff`.

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// One first-party script and stylesheet, no inline code, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub async fn defend(request: Request, next: Next) -> Response {
    if let Some(reason) = cross_site(&request) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross_site",
            format!(
                "{} {} came from another site ({reason}); state-changing requests are accepted only from this server's own pages or from clients that are not browsers",
                request.method(),
                request.uri().path()
            ),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Review links carry their token in the URL: never send it on to another site.
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

/// Why a state-changing request is cross-site, if it is: the browser's
/// `Sec-Fetch-Site`, else an `Origin` that is not this host. Requests with
/// neither (curl, the CLI, other servers) are not from a browser page.
fn cross_site(request: &Request) -> Option<String> {
    if matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    ) {
        return None;
    }
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        return (!matches!(site, "same-origin" | "none"))
            .then(|| format!("Sec-Fetch-Site: {site}"));
    }
    let origin = headers.get(header::ORIGIN)?.to_str().unwrap_or("null");
    let header_text = |name| {
        headers
            .get(name)
            .and_then(|value: &HeaderValue| value.to_str().ok())
            .unwrap_or("")
    };
    let host = header_text(header::HOST.as_str());
    // Behind a reverse proxy that rewrites Host, the browser's host is in
    // X-Forwarded-Host.
    let forwarded = header_text("x-forwarded-host");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    let same = origin_host.is_some_and(|rest| {
        [host, forwarded]
            .iter()
            .any(|candidate| !candidate.is_empty() && rest.eq_ignore_ascii_case(candidate))
    });
    (!same).then(|| format!("Origin: {origin}, Host: {host}"))
}

/// Every error answers in the shape its reader expects: JSON with a code
/// for the API (axum's own rejections — a bad query string or path, a body
/// over the limit, a wrong method — are plain text), and a page for a person
/// on a workbench route (the auth layer and the fallback answer JSON).
pub async fn shape_errors(request: Request, next: Next) -> Response {
    let path = request.uri().path().to_string();
    let mut response = shaped(&path, next.run(request).await).await;
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body is never read, so this connection cannot carry
        // another request: say so, or a client that reuses it loses its next
        // request to the close (RFC 9110 §15.5.14).
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

async fn shaped(path: &str, response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    let is_api = path.starts_with("/api/") || path == "/metrics";
    let is_page = !is_api && !path.starts_with("/assets/");
    let api_answered_text = is_api && !is_json;
    let page_answered_json = is_page && is_json;
    if !api_answered_text && !page_answered_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    if is_api {
        let (code, hint) = plain_error_code(status);
        let mut shaped =
            ApiError::new(status, code, format!("{}{hint}", text.trim())).into_response();
        carry_headers(&parts.headers, &mut shaped);
        return shaped;
    }
    // A page route answered JSON: show its message as a page.
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|value| value["error"]["message"].as_str().map(str::to_string))
        .unwrap_or(text);
    let mut shaped = (status, crate::pages::error_page(status, &message)).into_response();
    carry_headers(&parts.headers, &mut shaped);
    shaped
}

/// Headers that say more about the error than its body (`Allow` on a 405,
/// `Retry-After`), kept when the body is reshaped.
fn carry_headers(from: &axum::http::HeaderMap, to: &mut Response) {
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = from.get(&name) {
            to.headers_mut().insert(name, value.clone());
        }
    }
}

/// The code (and a hint) for an error axum answered in plain text.
fn plain_error_code(status: StatusCode) -> (&'static str, &'static str) {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("body_too_large", crate::error::TOO_LARGE_HINT),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "; see /api/v1/openapi.json for the methods each route takes",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("not_json", crate::error::NOT_JSON_HINT),
        StatusCode::BAD_REQUEST => (
            "bad_request",
            "; check the query string and path against /api/v1/openapi.json",
        ),
        status if status.is_server_error() => ("internal", ""),
        _ => ("bad_request", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut builder = Request::builder().method(method).uri("/api/v1/runs");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn only_state_changes_from_other_sites_are_refused() {
        let host = ("host", "127.0.0.1:7700");
        for (method, headers, refused) in [
            (Method::GET, vec![("sec-fetch-site", "cross-site")], false),
            (Method::POST, vec![("sec-fetch-site", "same-origin")], false),
            (Method::POST, vec![("sec-fetch-site", "none")], false),
            (Method::POST, vec![("sec-fetch-site", "cross-site")], true),
            (Method::PUT, vec![("sec-fetch-site", "same-site")], true),
            (
                Method::POST,
                vec![host, ("origin", "http://127.0.0.1:7700")],
                false,
            ),
            (
                Method::POST,
                vec![host, ("origin", "http://evil.example")],
                true,
            ),
            (Method::POST, vec![host, ("origin", "null")], true),
            (
                Method::DELETE,
                vec![host, ("origin", "http://127.0.0.1:7700.evil.example")],
                true,
            ),
            (Method::POST, vec![host], false),
            (
                Method::POST,
                vec![
                    host,
                    ("x-forwarded-host", "factory.example"),
                    ("origin", "https://factory.example"),
                ],
                false,
            ),
        ] {
            let request = request(method.clone(), &headers);
            assert_eq!(
                cross_site(&request).is_some(),
                refused,
                "{method} {headers:?}"
            );
        }
    }
}

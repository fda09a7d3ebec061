//! Conditional GETs for pages and assets: a weak `ETag` from the body's
//! SHA-256 (weak, because gzip may re-encode the body on its way out), and
//! `304 Not Modified` when the browser already holds that body.
//! A live refresh of a page whose regions did not change then costs a
//! render and a few hundred bytes instead of the page again, and assets are
//! revalidated (`no-cache`) without being re-sent.
//!
//! Bodies are buffered to be hashed: pages and assets are tens of KB. The
//! event stream and the JSON API are not routed through here.

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

/// Largest body this layer buffers; anything bigger passes through as is.
const MAX_BODY: usize = 8 * 1024 * 1024;

pub async fn etag(request: Request, next: Next) -> Response {
    let wanted = (request.method() == Method::GET)
        .then(|| request.headers().get(header::IF_NONE_MATCH).cloned())
        .flatten();
    let is_get = request.method() == Method::GET;
    let response = next.run(request).await;
    if !is_get || response.status() != StatusCode::OK {
        return response;
    }
    // Only bodies of a known, moderate size are tagged (pages are rendered
    // whole, so theirs is known); anything else goes out untouched.
    if response
        .body()
        .size_hint()
        .upper()
        .is_none_or(|size| size > MAX_BODY as u64)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(%error, "cannot buffer a page to tag it");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    let tag = tag_of(&bytes);
    let value = HeaderValue::from_str(&tag).expect("hex in quotes is a valid header value");
    if wanted.as_ref().is_some_and(|w| matches(w, &tag)) {
        let mut not_modified = StatusCode::NOT_MODIFIED.into_response();
        not_modified.headers_mut().insert(header::ETAG, value);
        if let Some(cache) = parts.headers.get(header::CACHE_CONTROL) {
            not_modified
                .headers_mut()
                .insert(header::CACHE_CONTROL, cache.clone());
        }
        return not_modified;
    }
    parts.headers.insert(header::ETAG, value);
    // Pages are per person and change any moment: keep them out of shared
    // caches and have the browser ask each time (with the tag).
    parts
        .headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("private, no-cache"));
    Response::from_parts(parts, Body::from(bytes))
}

/// A weak entity tag: the first 128 bits of the body's SHA-256.
pub fn tag_of(bytes: &[u8]) -> String {
    format!("W/\"{}\"", hex::encode(&Sha256::digest(bytes)[..16]))
}

/// Whether an `If-None-Match` value names `tag` (a list, `*`, or weak tags,
/// which a GET compares weakly).
fn matches(wanted: &HeaderValue, tag: &str) -> bool {
    let Ok(wanted) = wanted.to_str() else {
        return false;
    };
    wanted.split(',').map(str::trim).any(|candidate| {
        candidate == "*" || candidate.trim_start_matches("W/") == tag.trim_start_matches("W/")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_and_weak_tags_match() {
        let tag = tag_of(b"page");
        assert_eq!(tag.len(), 36);
        for header in [
            tag.clone(),
            format!("\"other\", {tag}"),
            tag.trim_start_matches("W/").to_string(),
            "*".to_string(),
        ] {
            assert!(
                matches(&HeaderValue::from_str(&header).unwrap(), &tag),
                "{header}"
            );
        }
        assert!(!matches(&HeaderValue::from_static("\"other\""), &tag));
        assert_ne!(tag_of(b"page"), tag_of(b"page!"));
    }
}

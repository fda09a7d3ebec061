//! Roles, API tokens, and the one table that says which role each route
//! needs. Every request passes [`authorize`]; a route missing from
//! [`ROUTES`] is refused (admin-only), so forgetting an entry fails closed.

use std::str::FromStr;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use factory_core::consensus::TesterRole;
use factory_core::transitions::Principal;
use factory_store::{ReviewScope, Store, TokenRecord};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::SharedState;
use crate::error::ApiError;

/// Who may do what; each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also approves and rejects gates, chats, writes reviews and reflections.
    Reviewer,
    /// Also creates runs and runs, retries and re-configures blocks.
    Operator,
    /// Also manages tokens and templates.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Reviewer => "reviewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "reviewer" => Ok(Role::Reviewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role `{other}`: use viewer, reviewer, operator or admin"
            )),
        }
    }
}

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Recorded in the event log: `user:<token name>`.
    pub actor: String,
    pub role: Role,
    /// A review link's token: it acts for one tester on one run only.
    pub scope: Option<ReviewScope>,
    /// For a review link: the actor who minted it. The link acts for them
    /// when the separate-reviewer rule is checked.
    pub minted_by: Option<String>,
    /// The tester role an admin granted the token (review links carry theirs
    /// in `scope`); a review counts with this role's weight.
    pub tester_role: Option<TesterRole>,
    /// SHA-256 of the token the request came with (`None` in `--no-auth`
    /// mode): long-lived streams check it is still valid.
    pub token_hash: Option<String>,
}

impl Caller {
    /// Who this caller is to the engine's approval rules.
    pub fn principal(&self) -> Principal<'_> {
        Principal {
            actor: &self.actor,
            for_whom: self.minted_by.as_deref(),
        }
    }
}

/// Routes a review link's token may use (each with `{run}` checked against
/// the token's run); everything else is refused to it.
pub const REVIEW_LINK_ROUTES: &[&str] = &[
    "/runs/{run}/review/{block}",
    "/runs/{run}/convergence",
    "/api/v1/runs/{run}/blocks/{block}/feedback",
    "/api/v1/runs/{run}/blocks/{block}/review-chat",
    "/api/v1/runs/{run}/stream",
    "/assets/{file}",
];

/// True when `path` (the request's) names `run` where `route` has `{run}`.
fn path_names_run(route: &str, path: &str, run: &str) -> bool {
    let Some(at) = route.split('/').position(|segment| segment == "{run}") else {
        return true;
    };
    path.split('/').nth(at) == Some(run)
}

/// `(method, route, role)`: `None` is public.
pub const ROUTES: &[(&str, &str, Option<Role>)] = &[
    ("GET", "/api/v1/health", None),
    ("GET", "/api/v1/openapi.json", None),
    // Signed with the hook's own secret (Standard Webhooks), not a token.
    ("POST", "/api/v1/hooks/{*path}", None),
    ("GET", "/api/v1/events", Some(Role::Viewer)),
    ("GET", "/api/v1/notifications", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/notifications/{id}/retry",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/records", Some(Role::Viewer)),
    ("POST", "/api/v1/records/{template}", Some(Role::Operator)),
    (
        "GET",
        "/api/v1/records/{template}/{key}",
        Some(Role::Viewer),
    ),
    (
        "POST",
        "/api/v1/records/{template}/{key}/retry",
        Some(Role::Operator),
    ),
    ("GET", "/metrics", Some(Role::Viewer)),
    ("GET", "/api/v1/whoami", Some(Role::Viewer)),
    ("GET", "/api/v1/templates", Some(Role::Viewer)),
    ("POST", "/api/v1/templates", Some(Role::Admin)),
    ("POST", "/api/v1/templates/validate", Some(Role::Viewer)),
    (
        "GET",
        "/api/v1/templates/{template}/memory",
        Some(Role::Viewer),
    ),
    ("GET", "/api/v1/runs", Some(Role::Viewer)),
    ("POST", "/api/v1/runs", Some(Role::Operator)),
    ("GET", "/api/v1/runs/{run}", Some(Role::Viewer)),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}",
        Some(Role::Viewer),
    ),
    ("GET", "/api/v1/runs/{run}/events", Some(Role::Viewer)),
    ("GET", "/api/v1/runs/{run}/stream", Some(Role::Viewer)),
    ("GET", "/api/v1/stream", Some(Role::Viewer)),
    ("GET", "/api/v1/runs/{run}/files", Some(Role::Viewer)),
    ("GET", "/api/v1/runs/{run}/files/{name}", Some(Role::Viewer)),
    ("GET", "/api/v1/runs/{run}/drafts", Some(Role::Viewer)),
    (
        "PUT",
        "/api/v1/runs/{run}/drafts/{key}",
        Some(Role::Reviewer),
    ),
    ("GET", "/api/v1/runs/{run}/reflection", Some(Role::Viewer)),
    ("PUT", "/api/v1/runs/{run}/reflection", Some(Role::Reviewer)),
    ("GET", "/api/v1/runs/{run}/ratings", Some(Role::Viewer)),
    ("POST", "/api/v1/runs/{run}/ratings", Some(Role::Reviewer)),
    ("GET", "/api/v1/runs/{run}/gaps", Some(Role::Viewer)),
    ("GET", "/api/v1/runs/{run}/chat", Some(Role::Viewer)),
    ("POST", "/api/v1/runs/{run}/chat", Some(Role::Reviewer)),
    ("POST", "/api/v1/runs/{run}/gaps/{id}", Some(Role::Reviewer)),
    (
        "GET",
        "/api/v1/templates/{template}/ratings",
        Some(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/templates/{template}/quality",
        Some(Role::Viewer),
    ),
    ("GET", "/templates/{template}/quality", Some(Role::Viewer)),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/approve",
        Some(Role::Reviewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/reject",
        Some(Role::Reviewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/retry",
        Some(Role::Operator),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/run",
        Some(Role::Operator),
    ),
    (
        "PUT",
        "/api/v1/runs/{run}/blocks/{block}/autonomy",
        Some(Role::Operator),
    ),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}/artifacts",
        Some(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}/artifacts/{key}",
        Some(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}/logs/{stream}",
        Some(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}/diff",
        Some(Role::Viewer),
    ),
    (
        "GET",
        "/api/v1/runs/{run}/blocks/{block}/chat",
        Some(Role::Viewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/chat",
        Some(Role::Reviewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/feedback",
        Some(Role::Reviewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/blocks/{block}/review-chat",
        Some(Role::Reviewer),
    ),
    (
        "POST",
        "/api/v1/runs/{run}/review-links",
        Some(Role::Operator),
    ),
    ("GET", "/api/v1/runs/{run}/convergence", Some(Role::Viewer)),
    ("GET", "/api/v1/improvement-items", Some(Role::Viewer)),
    (
        "PATCH",
        "/api/v1/improvement-items/{id}",
        Some(Role::Reviewer),
    ),
    ("POST", "/api/v1/corrections-ingest", Some(Role::Operator)),
    ("GET", "/api/v1/tokens", Some(Role::Admin)),
    ("POST", "/api/v1/tokens", Some(Role::Admin)),
    ("DELETE", "/api/v1/tokens/{id}", Some(Role::Admin)),
    // Pages and their assets.
    ("GET", "/login", None),
    ("POST", "/login", None),
    ("POST", "/logout", None),
    ("GET", "/assets/{file}", None),
    ("GET", "/", Some(Role::Viewer)),
    ("GET", "/runs/{run}", Some(Role::Viewer)),
    ("GET", "/runs/{run}/blocks/{block}", Some(Role::Viewer)),
    ("GET", "/runs/{run}/review/{block}", Some(Role::Reviewer)),
    ("GET", "/runs/{run}/convergence", Some(Role::Viewer)),
    ("GET", "/streams", Some(Role::Viewer)),
    ("GET", "/notifications", Some(Role::Viewer)),
    ("GET", "/streams/{template}", Some(Role::Viewer)),
    (
        "GET",
        "/streams/{template}/records/{key}",
        Some(Role::Viewer),
    ),
];

/// The role a route needs; unknown routes need admin.
pub fn required_role(method: &Method, route: &str) -> Option<Role> {
    ROUTES
        .iter()
        .find(|(m, r, _)| *m == method.as_str() && *r == route)
        .map_or(Some(Role::Admin), |(_, _, role)| *role)
}

pub const COOKIE: &str = "factory_token";

/// A new random token: `(secret shown once, public id, SHA-256 of the secret)`.
pub fn new_token() -> Result<(String, String, String), ApiError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::internal(format!("no randomness for a token: {e}")))?;
    let secret = format!("pf_{}", hex::encode(bytes));
    let id = secret[..11].to_string();
    let hash = token_hash(&secret);
    Ok((secret, id, hash))
}

pub fn token_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Creates and stores a token; returns the secret (shown once) and its record.
/// `tester_role`: the weight its reviews count with (none: it does not vote).
pub async fn create_token(
    store: &dyn Store,
    name: &str,
    role: Role,
    created_by: &str,
    tester_role: Option<TesterRole>,
) -> Result<(String, TokenRecord), ApiError> {
    create_scoped_token(store, name, role, created_by, None, tester_role).await
}

/// A review link's token: reviewer rights on one run, as one tester.
pub async fn create_review_token(
    store: &dyn Store,
    scope: ReviewScope,
    created_by: &str,
) -> Result<(String, TokenRecord), ApiError> {
    let name = format!("review {} ({})", scope.tester, scope.tester_role);
    create_scoped_token(store, &name, Role::Reviewer, created_by, Some(scope), None).await
}

async fn create_scoped_token(
    store: &dyn Store,
    name: &str,
    role: Role,
    created_by: &str,
    scope: Option<ReviewScope>,
    tester_role: Option<TesterRole>,
) -> Result<(String, TokenRecord), ApiError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "bad_token_name",
            "a token name is 1–64 printable characters (it becomes the actor `user:<name>` in the event log)",
        ));
    }
    let (secret, id, hash) = new_token()?;
    let record = TokenRecord {
        id,
        name: name.to_string(),
        role: role.as_str().to_string(),
        hash,
        created_by: created_by.to_string(),
        created_at: factory_engine::now_ms(),
        revoked_at: None,
        scope,
        tester_role: tester_role.map(|role| role.as_str().to_string()),
    };
    store.create_token(&record).await?;
    Ok((secret, record))
}

/// Finds the caller for a token secret.
pub async fn lookup(store: &dyn Store, secret: &str) -> Result<Option<Caller>, ApiError> {
    lookup_hash(store, &token_hash(secret)).await
}

/// Finds the caller for a token's hash (`None`: unknown or revoked).
pub async fn lookup_hash(store: &dyn Store, hash: &str) -> Result<Option<Caller>, ApiError> {
    let Some(record) = store.token_by_hash(hash).await? else {
        return Ok(None);
    };
    if record.revoked_at.is_some() {
        return Ok(None);
    }
    let role = record.role.parse().map_err(ApiError::internal)?;
    Ok(Some(Caller {
        actor: match &record.scope {
            Some(scope) => format!("reviewer:{}", scope.tester),
            None => format!("user:{}", record.name),
        },
        role,
        minted_by: record.scope.is_some().then_some(record.created_by),
        scope: record.scope,
        tester_role: record
            .tester_role
            .as_deref()
            .and_then(|role| role.parse().ok()),
        token_hash: Some(record.hash),
    }))
}

/// Valid tokens seen in the last few seconds, so a busy API does not look
/// every request's token up in the database. Revoking through this server
/// clears it at once; a token revoked elsewhere (the CLI, another server)
/// stops working within [`TokenCache::TTL`].
pub struct TokenCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, (Caller, std::time::Instant)>>,
    /// Bumped on every revocation through this server.
    revoked: tokio::sync::watch::Sender<u64>,
}

impl Default for TokenCache {
    fn default() -> TokenCache {
        TokenCache {
            entries: std::sync::Mutex::default(),
            revoked: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl TokenCache {
    pub const TTL: std::time::Duration = std::time::Duration::from_secs(5);

    pub async fn lookup(
        &self,
        store: &dyn Store,
        secret: &str,
    ) -> Result<Option<Caller>, ApiError> {
        self.lookup_hash(store, token_hash(secret)).await
    }

    /// [`TokenCache::lookup`] by the token's hash.
    pub async fn lookup_hash(
        &self,
        store: &dyn Store,
        hash: String,
    ) -> Result<Option<Caller>, ApiError> {
        if let Ok(entries) = self.entries.lock()
            && let Some((caller, at)) = entries.get(&hash)
            && at.elapsed() < Self::TTL
        {
            return Ok(Some(caller.clone()));
        }
        let caller = lookup_hash(store, &hash).await?;
        if let (Some(caller), Ok(mut entries)) = (&caller, self.entries.lock()) {
            if entries.len() > 10_000 {
                entries.clear();
            }
            entries.insert(hash, (caller.clone(), std::time::Instant::now()));
        }
        Ok(caller)
    }

    /// Forgets every cached token and tells open streams to check theirs
    /// (a token was revoked).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
        self.revoked.send_modify(|generation| *generation += 1);
    }

    /// Resolves once the token with `hash` no longer works: at once when it is
    /// revoked through this server, within [`TokenCache::TTL`] when elsewhere
    /// (the CLI, another server). A store that cannot answer keeps it open.
    pub async fn until_revoked(&self, store: &dyn Store, hash: Option<String>) {
        let Some(hash) = hash else {
            return std::future::pending().await;
        };
        let mut revoked = self.revoked.subscribe();
        loop {
            tokio::select! {
                _ = revoked.changed() => {}
                _ = tokio::time::sleep(Self::TTL) => {}
            }
            if let Ok(None) = self.lookup_hash(store, hash.clone()).await {
                return;
            }
        }
    }
}

/// The token a request carries: `Authorization: Bearer`, a `token` query
/// parameter (links and `EventSource`, which cannot set headers), or the
/// workbench cookie.
fn presented_token(request: &Request) -> Option<(String, bool)> {
    if let Some(value) = request.headers().get(header::AUTHORIZATION)
        && let Ok(text) = value.to_str()
        && let Some(token) = text.strip_prefix("Bearer ")
    {
        return Some((token.trim().to_string(), false));
    }
    if let Some(query) = request.uri().query() {
        for pair in query.split('&') {
            if let Some(token) = pair.strip_prefix("token=")
                && !token.is_empty()
            {
                return Some((token.to_string(), true));
            }
        }
    }
    let cookies = request.headers().get_all(header::COOKIE);
    for value in cookies {
        let Ok(text) = value.to_str() else { continue };
        for part in text.split(';') {
            if let Some(token) = part.trim().strip_prefix("factory_token=") {
                return Some((token.to_string(), false));
            }
        }
    }
    None
}

/// Authenticates the caller and checks the route's role. Pages redirect to
/// the login page; the API answers 401/403 JSON.
pub(crate) async fn authorize(
    State(state): State<SharedState>,
    matched: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map_or("", |m| m.as_str()).to_string();
    let needed = required_role(request.method(), &route);
    let is_page = !route.starts_with("/api/") && route != "/metrics";
    let presented = presented_token(&request);
    let caller = if state.config.no_auth {
        Some(Caller {
            actor: "user:local".to_string(),
            role: Role::Admin,
            scope: None,
            minted_by: None,
            tester_role: None,
            token_hash: None,
        })
    } else {
        match &presented {
            Some((secret, _)) => match state.tokens.lookup(state.store.as_ref(), secret).await {
                Ok(caller) => caller,
                Err(error) => return error.into_response(),
            },
            None => None,
        }
    };
    if let Some(needed) = needed {
        match &caller {
            None if is_page => {
                let target = request.uri().path().to_string();
                return Redirect::to(&format!("/login?next={}", url_escape(&target)))
                    .into_response();
            }
            None => {
                let message = if presented.is_some() {
                    "the token is unknown or revoked; ask an admin for a new one (`factory token create`)"
                } else {
                    "this route needs a token: send `Authorization: Bearer <token>` (create one with `factory token create --role viewer`)"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
                    .into_response();
            }
            Some(caller) if caller.role < needed => {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "{} {route} needs the {} role; `{}` is a {}",
                        request.method(),
                        needed.as_str(),
                        caller.actor,
                        caller.role.as_str()
                    ),
                )
                .into_response();
            }
            Some(Caller {
                scope: Some(scope),
                actor,
                ..
            }) if !REVIEW_LINK_ROUTES.contains(&route.as_str())
                || !path_names_run(&route, request.uri().path(), &scope.run_id) =>
            {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "`{actor}` holds a review link for run `{}`: it can open that run's review pages and submit reviews, nothing else",
                        scope.run_id
                    ),
                )
                .into_response();
            }
            Some(_) => {}
        }
    }
    if let Some(caller) = caller.clone() {
        request.extensions_mut().insert(caller);
    }
    let mut response = next.run(request).await;
    // A token given in a page link is kept in a cookie for the next pages.
    if let (Some((secret, true)), Some(_), true) = (&presented, &caller, is_page)
        && !state.config.no_auth
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict"
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn url_escape(path: &str) -> String {
    path.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'/' | b'-' | b'_' | b'.' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "this route needs a token: send `Authorization: Bearer <token>`",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin > Role::Operator);
        assert!(Role::Operator > Role::Reviewer);
        assert!(Role::Reviewer > Role::Viewer);
        assert_eq!("reviewer".parse::<Role>(), Ok(Role::Reviewer));
        assert!("root".parse::<Role>().unwrap_err().contains("viewer"));
    }

    #[test]
    fn unknown_routes_fail_closed() {
        assert_eq!(
            required_role(&Method::GET, "/api/v1/secret"),
            Some(Role::Admin)
        );
        assert_eq!(required_role(&Method::GET, "/api/v1/health"), None);
        assert_eq!(
            required_role(&Method::POST, "/api/v1/runs/{run}/blocks/{block}/approve"),
            Some(Role::Reviewer)
        );
    }

    #[test]
    fn tokens_are_random_and_only_their_hash_is_kept() {
        let (a, id, hash) = new_token().unwrap();
        let (b, _, _) = new_token().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("pf_") && a.len() == 67);
        assert!(a.starts_with(&id));
        assert_eq!(hash, token_hash(&a));
        assert!(!hash.contains(&a[3..]));
    }
}

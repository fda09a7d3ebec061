//! The operator workbench: server-rendered HTML (maud, escaped by default)
//! with one small vendored script. Pages act through the JSON API with the
//! same cookie, and refresh their `data-live` regions on server-sent events.

mod block;
mod explain;
mod graph;
mod home;
mod notifications;
pub(crate) mod quality;
mod records;
mod render;
mod review;
mod run;
mod timeline;

use axum::Router;
use axum::extract::{Path, Query};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use crate::SharedState;
use crate::auth::Caller;
use crate::error::ApiError;

const CSS: &str = include_str!("../../assets/workbench.css");
const JS: &str = include_str!("../../assets/workbench.js");

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(home::page))
        .route("/login", get(login).post(sign_in))
        .route("/logout", axum::routing::post(sign_out))
        .route("/assets/{file}", get(asset))
        .route("/runs/{run}", get(run::page))
        .route("/runs/{run}/blocks/{block}", get(block::page))
        .route("/runs/{run}/review/{block}", get(review::page))
        .route("/runs/{run}/convergence", get(review::convergence_page))
        .route("/templates/{template}/quality", get(quality::page))
        .route("/streams", get(records::index))
        .route("/notifications", get(notifications::page))
        .route("/streams/{template}", get(records::page))
        .route(
            "/streams/{template}/records/{key}",
            get(records::record_page),
        )
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "workbench.css" => (CSS, "text/css; charset=utf-8"),
        "workbench.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The page frame. `run` and `seq` switch on live updates for one run; a
/// page without them listens to every run.
pub(crate) fn layout(
    title: &str,
    caller: &Caller,
    live: Option<(&str, u64)>,
    body: Markup,
) -> Markup {
    layout_with(title, caller, live, None, body)
}

/// [`layout`], and with `poll_ms` the page's live regions are fetched
/// again that often (for pages that no event stream covers).
pub(crate) fn layout_with(
    title: &str,
    caller: &Caller,
    live: Option<(&str, u64)>,
    poll_ms: Option<u32>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Process Factory" }
                link rel="stylesheet" href="/assets/workbench.css";
                script src="/assets/workbench.js" defer {}
            }
            body data-run=[live.map(|(r, _)| r)] data-seq=[live.map(|(_, s)| s)] data-poll=[poll_ms] {
                header.top {
                    a.brand href="/" { "Process Factory" }
                    nav {
                        a href="/" { "Runs" }
                        a href="/streams" { "Streams" }
                        a href="/notifications" { "Notifications" }
                        a href="/api/v1/openapi.json" { "API" }
                    }
                    span.who title="signed in as" { (caller.actor) " · " (caller.role.as_str()) }
                    form.sign-out method="post" action="/logout" { button.link type="submit" { "Sign out" } }
                    span #live-status .live-status title="live updates" { "○ connecting" }
                }
                main { (body) }
            }
        }
    }
}

/// Percent-encodes a query value or a path segment (everything but
/// unreserved characters): record keys and filters come from outside.
pub(crate) fn url_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An error page for a person who is not (or not yet) signed in, or whose
/// request never reached a page handler.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { (status.as_u16()) " · Process Factory" }
                link rel="stylesheet" href="/assets/workbench.css";
            }
            body {
                main.login {
                    h1 { "Cannot show this page" }
                    p.error role="alert" { (message) }
                    p { a href="/" { "Back to the runs" } " · " a href="/login" { "Sign in" } }
                }
            }
        }
    }
}

pub(crate) fn page_error(caller: &Caller, error: ApiError) -> Response {
    let status = error.status;
    let markup = layout(
        "Error",
        caller,
        None,
        html! {
            section.panel.error-page {
                h1 { "Cannot show this page" }
                p.error { (error.message) }
                p { a href="/" { "Back to the runs" } }
            }
        },
    );
    (status, markup).into_response()
}

#[derive(Debug, Deserialize)]
struct LoginQuery {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: Option<String>,
}

/// Where to go after signing in: a path on this server only. Browsers read
/// `/\host` and `/<tab>/host` as `//host`, another site, so backslashes,
/// whitespace and control characters are refused along with `//`.
fn same_origin_path(next: Option<String>) -> String {
    next.filter(|path| {
        path.starts_with('/')
            && !path.starts_with("//")
            && !path
                .chars()
                .any(|c| c == '\\' || c.is_whitespace() || c.is_control())
    })
    .unwrap_or_else(|| "/".to_string())
}

/// The sign-in form; signed in already, go where the user was going.
async fn login(
    caller: Option<axum::Extension<Caller>>,
    Query(query): Query<LoginQuery>,
) -> Response {
    let next = same_origin_path(query.next);
    if caller.is_some() {
        return Redirect::to(&next).into_response();
    }
    login_form(&next, None).into_response()
}

fn login_form(next: &str, problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Sign in · Process Factory" }
                link rel="stylesheet" href="/assets/workbench.css";
            }
            body {
                main.login {
                    h1 { "Process Factory" }
                    p { "Paste an API token (create one with " code { "factory token create --role operator" } ")." }
                    @if let Some(problem) = problem { p.error role="alert" { (problem) } }
                    form method="post" action="/login" {
                        input type="hidden" name="next" value=(next);
                        label for="token" { "Token" }
                        input #token type="password" name="token" placeholder="pf_…" required autofocus autocomplete="off";
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// Checks the token (sent in the body, so it never sits in a URL or a log)
/// and keeps it in the session cookie.
async fn sign_in(
    axum::extract::State(state): axum::extract::State<SharedState>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let next = same_origin_path(form.next);
    let token = form.token.trim();
    // A token is `pf_` and hex: anything else could smuggle cookie attributes.
    if !token
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return (
            StatusCode::UNAUTHORIZED,
            login_form(
                &next,
                Some("That is not a token: paste the `pf_…` value `factory token create` printed."),
            ),
        )
            .into_response();
    }
    let known = if state.config.no_auth {
        Ok(true)
    } else {
        state
            .tokens
            .lookup(state.store.as_ref(), token)
            .await
            .map(|caller| caller.is_some())
    };
    match known {
        Ok(true) => {
            let mut response = Redirect::to(&next).into_response();
            if let Ok(cookie) = header::HeaderValue::from_str(&format!(
                "{}={token}; Path=/; HttpOnly; SameSite=Strict",
                crate::auth::COOKIE
            )) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Ok(false) => (
            StatusCode::UNAUTHORIZED,
            login_form(
                &next,
                Some("That token is unknown or revoked. Check it, or ask an admin for a new one."),
            ),
        )
            .into_response(),
        Err(error) => (error.status, login_form(&next, Some(&error.message))).into_response(),
    }
}

/// Forgets the session cookie.
async fn sign_out() -> Response {
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        header::HeaderValue::from_static(
            "factory_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}

//! The notification outbox for people: what was sent where, what is still
//! trying and why, and a "Send again" button on failed ones for operators.
//! The page looks again every two seconds.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use factory_core::notify::NotificationStatus;
use factory_store::NotificationFilter;
use maud::html;
use serde::Deserialize;

use crate::SharedState;
use crate::auth::{Caller, Role};
use crate::error::ApiError;

#[derive(Debug, Default, Deserialize)]
pub struct NotificationsQuery {
    #[serde(default)]
    status: Option<String>,
}

pub async fn page(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<NotificationsQuery>,
) -> Response {
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match s.parse::<NotificationStatus>() {
            Ok(status) => Some(status),
            Err(e) => return super::page_error(&caller, ApiError::bad_request("bad_status", e)),
        },
    };
    let filter = NotificationFilter {
        status,
        limit: 200,
        ..NotificationFilter::default()
    };
    let rows = match state.engine.notifications(&filter).await {
        Ok(rows) => rows,
        Err(error) => return super::page_error(&caller, error.into()),
    };
    let configured = state.engine.config().notifications.clone();
    let can_retry = caller.role >= Role::Operator;
    let body = html! {
        section.panel {
            h1 { "Notifications" }
            @match &configured {
                Some(n) => p.muted {
                    "This server sends through " (n.channel_names().join(", "))
                    " by " (n.rules.len()) " rule(s) of its factory.toml; failed tries are retried up to "
                    (n.max_attempts) " times."
                },
                None => p.muted {
                    "This server sends no notifications: add [notifications] channels and rules to its factory.toml (README \"Notifications\"). Rows below were queued by other processes of the store."
                },
            }
            form.filters method="get" {
                label { "Status "
                    select name="status" {
                        option value="" { "any" }
                        @for s in NotificationStatus::ALL {
                            option value=(s.as_str()) selected[status == Some(s)] { (s.as_str()) }
                        }
                    }
                }
                button type="submit" { "Show" }
            }
            table #notifications .records data-live {
                thead { tr { th { "Queued" } th { "Occasion" } th { "Subject" } th { "Channel" } th { "Status" } th.num { "Tries" } th { "Last error" } @if can_retry { th {} } } }
                tbody {
                    @for n in &rows {
                        tr data-notification=(n.id) {
                            td { (factory_core::run::format_utc(n.created_at)) }
                            td { code { (n.occasion.as_str()) } }
                            td {
                                @match &n.run_id {
                                    Some(run) => a href={ "/runs/" (super::url_escape(run)) } { (n.subject) },
                                    None => (n.subject),
                                }
                            }
                            td { (n.channel) }
                            td {
                                span.status.(n.status.as_str()) { (n.status.as_str()) }
                                @if let Some(at) = n.delivered_at { " " span.muted { (factory_core::run::format_utc(at)) } }
                                @if n.status == NotificationStatus::Pending && n.attempts > 0 {
                                    " " span.muted { "next try " (factory_core::run::format_utc(n.next_at)) }
                                }
                            }
                            td.num { (n.attempts) }
                            td.error { (n.last_error.as_deref().unwrap_or("")) }
                            @if can_retry {
                                td {
                                    @if n.status == NotificationStatus::Failed {
                                        form data-action="retry-notification" data-id=(n.id) {
                                            button type="submit" { "Send again" }
                                            span.error data-error {}
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan=(if can_retry { 8 } else { 7 }) .muted { "No notifications here." } } }
                }
            }
        }
    };
    super::layout_with("Notifications", &caller, None, Some(2000), body).into_response()
}

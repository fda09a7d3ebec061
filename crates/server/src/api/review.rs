//! The feedback loop's API (seed `002`): review submissions, review links,
//! improvement items, `corrections-ingest`, convergence, and the audit page's
//! chat with the compiled clone.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use factory_core::consensus::TesterRole;
use factory_core::feedback as loop_core;
use factory_engine::feedback::{IngestRequest, ItemPatch, Submission, Tester};
use factory_store::{ReviewScope, RunRecord, kinds};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SharedState;
use crate::api::blocks::{BlockView, artifact_content, block_view, chat_turn, selected_attempt};
use crate::auth::{self, Caller, Role};
use crate::error::{ApiError, ApiJson, ApiResult};

fn tester_role(text: &str, field: &str) -> ApiResult<TesterRole> {
    text.parse().map_err(|message| {
        ApiError::unprocessable("bad_tester_role", format!("{field}: {message}"))
    })
}

/// Who a review counts as. The identity and the weight come from the
/// credential, never from the body: a review link's scope, or the tester
/// role an admin granted the token. Only an admin (who could mint a link for
/// anyone) may name them in the body. A body that names someone else is 403.
fn tester_of(caller: &Caller, body: &FeedbackBody) -> ApiResult<Tester> {
    let claimed = |name: &str, role: TesterRole| -> ApiResult<Tester> {
        let other_name = body.tester.as_deref().is_some_and(|t| t.trim() != name);
        let other_role = body
            .tester_role
            .as_deref()
            .is_some_and(|r| r != role.as_str());
        if other_name || other_role {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "not_your_vote",
                format!(
                    "`{}` reviews as {name} ({}); a review cannot name another tester or role — ask an admin for a review link or a token with that tester role",
                    caller.actor,
                    role.as_str()
                ),
            ));
        }
        Ok(Tester {
            name: name.to_string(),
            role,
        })
    };
    let own_name = caller.actor.trim_start_matches("user:");
    match (&caller.scope, caller.tester_role) {
        (Some(scope), _) => claimed(
            &scope.tester,
            tester_role(&scope.tester_role, "the link's tester_role")?,
        ),
        (None, Some(role)) => claimed(own_name, role),
        (None, None) if caller.role >= Role::Admin => {
            let role = body.tester_role.as_deref().ok_or_else(|| {
                ApiError::unprocessable(
                    "missing_tester_role",
                    "feedback body: `tester_role` is required (expert, product_lead, tech_lead, team or external) for an admin without a granted tester role",
                )
            })?;
            Ok(Tester {
                name: body
                    .tester
                    .clone()
                    .filter(|t| !t.trim().is_empty())
                    .unwrap_or_else(|| own_name.to_string()),
                role: tester_role(role, "tester_role")?,
            })
        }
        (None, None) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "no_tester_role",
            format!(
                "`{}` has no tester role, so its review would weigh nothing: an admin grants one (`factory token create --name NAME --role reviewer --tester-role team`) or sends a review link (`factory token review RUN --tester NAME --tester-role expert`)",
                caller.actor
            ),
        )),
    }
}

/// A submission plus who is submitting, for callers without a review link.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackBody {
    #[serde(default)]
    tester: Option<String>,
    #[serde(default)]
    tester_role: Option<String>,
    #[serde(flatten)]
    submission: Submission,
}

/// `POST /api/v1/runs/{run}/blocks/{block}/feedback`.
pub async fn submit(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Json<Value>> {
    crate::error::require_json(&headers, &body)?;
    // `flatten` and `deny_unknown_fields` do not combine in serde, so unknown
    // fields are checked here against both parts.
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("feedback body: {e}")))?;
    if let Some(object) = value.as_object() {
        const KNOWN: &[&str] = &[
            "tester",
            "tester_role",
            "items",
            "ratings",
            "answers",
            "free_text",
            "close",
        ];
        if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(ApiError::unprocessable(
                "unknown_field",
                format!(
                    "feedback body: unknown field `{unknown}`; expected one of {}",
                    KNOWN.join(", ")
                ),
            ));
        }
    }
    let body: FeedbackBody = serde_json::from_value(value)
        .map_err(|e| ApiError::unprocessable("bad_request_body", format!("feedback body: {e}")))?;
    let tester = tester_of(&caller, &body)?;
    let outcome = state
        .engine
        .submit_feedback(caller.principal(), &run, &block, &tester, body.submission)
        .await?;
    state.supervisor.kick(&run);
    Ok(Json(json!(outcome)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkBody {
    tester: String,
    tester_role: String,
}

/// `POST /api/v1/runs/{run}/review-links`: one link per review page of the
/// run, each carrying a new token bound to this run and tester.
pub async fn create_links(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
    ApiJson(body): ApiJson<LinkBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let links = review_links(
        &state.engine,
        &run,
        &body.tester,
        &body.tester_role,
        &caller.actor,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(json!(links))))
}

/// What an invitation to review gives the tester.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReviewLinks {
    pub token_id: String,
    pub tester: String,
    pub tester_role: String,
    pub links: Vec<ReviewLink>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ReviewLink {
    pub block: String,
    pub page: String,
    /// A path on the server, with the tester's token as `?token=`.
    pub url: String,
}

/// Creates a token bound to `run` and the tester, and one link per review
/// page of the run (the API and `factory token review` share it).
pub async fn review_links(
    engine: &factory_engine::Engine,
    run: &str,
    tester: &str,
    role: &str,
    created_by: &str,
) -> ApiResult<ReviewLinks> {
    tester_role(role, "tester_role")?;
    let tester = tester.trim();
    if tester.is_empty()
        || tester.len() > 64
        || !tester
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ' '))
    {
        return Err(ApiError::unprocessable(
            "bad_tester",
            "tester: 1–64 letters, digits, spaces, `-`, `_` or `.` (it names the reviewer in the event log)",
        ));
    }
    let handle = engine.open(run).await?;
    let run_id = handle.doc().run_id.clone();
    let pages: Vec<(String, String)> = handle
        .pipeline()
        .blocks()
        .iter()
        .filter_map(|b| {
            factory_engine::feedback::review_page(&handle, &b.id)
                .ok()
                .map(|page| (b.id.clone(), page))
        })
        .collect();
    if pages.is_empty() {
        return Err(ApiError::unprocessable(
            "no_review_pages",
            format!(
                "template `{}` has no `review-page` blocks, so run `{run_id}` has nothing to review",
                handle.pipeline().template().id
            ),
        ));
    }
    let (secret, record) = auth::create_review_token(
        engine.store().as_ref(),
        ReviewScope {
            run_id: run_id.clone(),
            tester: tester.to_string(),
            tester_role: role.to_string(),
        },
        created_by,
    )
    .await?;
    Ok(ReviewLinks {
        token_id: record.id,
        tester: tester.to_string(),
        tester_role: role.to_string(),
        links: pages
            .into_iter()
            .map(|(block, page)| ReviewLink {
                url: format!("/runs/{run_id}/review/{block}?token={secret}"),
                block,
                page,
            })
            .collect(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    run_id: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    skill_target: Option<String>,
}

/// `GET /api/v1/improvement-items?run_id=&status=&skill_target=`.
pub async fn list_items(
    State(state): State<SharedState>,
    Query(query): Query<ItemsQuery>,
) -> ApiResult<Json<Value>> {
    if let Some(Err(problem)) = query
        .status
        .as_deref()
        .map(str::parse::<factory_core::feedback::ItemStatus>)
    {
        return Err(ApiError::unprocessable(
            "bad_status",
            format!("status {problem}"),
        ));
    }
    let run_id = state.store.resolve_run_id(&query.run_id).await?;
    let items = state
        .store
        .items(
            &run_id,
            query.status.as_deref(),
            query.skill_target.as_deref(),
        )
        .await?;
    Ok(Json(json!({ "items": items, "total": items.len() })))
}

/// `PATCH /api/v1/improvement-items/{id}`.
pub async fn patch_item(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ItemPatch>,
) -> ApiResult<Json<Value>> {
    let item = state.engine.update_item(&caller.actor, &id, patch).await?;
    state.supervisor.kick(&item.run_id);
    Ok(Json(json!(item)))
}

/// `POST /api/v1/corrections-ingest`.
pub async fn ingest(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(request): ApiJson<IngestRequest>,
) -> ApiResult<Json<Value>> {
    let run_id = request.run_id.clone();
    let response = state.engine.ingest(&caller.actor, request).await?;
    state.supervisor.kick(&run_id);
    Ok(Json(json!(response)))
}

/// `GET /api/v1/runs/{run}/convergence`.
pub async fn convergence(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let (_, table) = state.engine.convergence(&run).await?;
    Ok(Json(json!(table)))
}

/// The compiled clone's system prompt: the review block's input with key
/// `system-prompt`, as text.
pub async fn clone_prompt(state: &SharedState, view: &BlockView) -> ApiResult<Option<String>> {
    let Some(dep) = view
        .block
        .inputs
        .depends
        .iter()
        .find(|d| d.key == "system-prompt")
    else {
        return Ok(None);
    };
    let Some(upstream) = view.doc.blocks.get(&dep.block) else {
        return Ok(None);
    };
    let Some(attempt) = selected_attempt(&upstream.history, None, &dep.block)? else {
        return Ok(None);
    };
    if !attempt
        .report
        .as_ref()
        .is_some_and(|r| r.artifacts.contains_key(&dep.key))
    {
        return Ok(None);
    }
    let (_, content) = artifact_content(state, attempt, &dep.block, &dep.key).await?;
    Ok(Some(String::from_utf8_lossy(&content).into_owned()))
}

/// `POST /api/v1/runs/{run}/blocks/{block}/review-chat`: a tester talks to
/// the compiled clone (its system prompt, the run's model).
pub async fn review_chat(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, block)): Path<(String, String)>,
    ApiJson(body): ApiJson<crate::api::blocks::ChatBody>,
) -> ApiResult<Json<Value>> {
    let message = body.message()?;
    let view = block_view(&state, &run, &block).await?;
    let Some(system) = clone_prompt(&state, &view).await? else {
        return Err(ApiError::unprocessable(
            "no_clone",
            format!(
                "block `{block}` reads no compiled `system-prompt` yet, so there is no clone to talk to"
            ),
        ));
    };
    let prefix = format!("review-chat:{block}/{}/", caller.actor);
    let earlier: Vec<Value> = state
        .store
        .records(&view.doc.run_id, kinds::CHAT)
        .await?
        .into_iter()
        .filter(|r| r.key.starts_with(&prefix))
        .map(|r| r.body)
        .collect();
    let mut transcript = String::new();
    for m in &earlier {
        transcript.push_str(&format!(
            "{}: {}\n\n",
            m["role"].as_str().unwrap_or("user"),
            m["text"].as_str().unwrap_or_default()
        ));
    }
    transcript.push_str(&format!("user: {message}\n"));
    let reply = chat_turn(&state, &view, system, transcript).await?;
    let now = factory_engine::now_ms();
    for (role, text) in [("user", message), ("assistant", reply.text.clone())] {
        state
            .store
            .put_record(&RunRecord {
                run_id: view.doc.run_id.clone(),
                template_id: view.doc.template_id.clone(),
                kind: kinds::CHAT.to_string(),
                key: format!("{prefix}{}", uuid::Uuid::now_v7()),
                actor: caller.actor.clone(),
                at: now,
                body: json!({ "role": role, "text": text, "model": reply.model }),
            })
            .await?;
    }
    Ok(Json(json!({ "reply": reply.text, "model": reply.model })))
}

/// The block's JSON inputs (each upstream's latest successful attempt),
/// parsed, with the block that produced each.
async fn json_inputs(state: &SharedState, view: &BlockView) -> ApiResult<Vec<(String, Value)>> {
    let mut documents = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for dep in &view.block.inputs.depends {
        if !seen.insert((&dep.block, &dep.key)) {
            continue;
        }
        let Some(upstream) = view.doc.blocks.get(&dep.block) else {
            continue;
        };
        let Some(attempt) = selected_attempt(&upstream.history, None, &dep.block)? else {
            continue;
        };
        let Some(artifact) = attempt
            .report
            .as_ref()
            .and_then(|r| r.artifacts.get(&dep.key))
        else {
            continue;
        };
        if artifact.format != factory_core::template::ArtifactFormat::Json {
            continue;
        }
        let (_, content) = artifact_content(state, attempt, &dep.block, &dep.key).await?;
        if let Ok(document) = serde_json::from_slice::<Value>(&content) {
            documents.push((dep.block.clone(), document));
        }
    }
    Ok(documents)
}

/// The extraction review's items: every leaf of the JSON inputs.
pub async fn extraction_items(
    state: &SharedState,
    view: &BlockView,
) -> ApiResult<Vec<loop_core::ReviewItem>> {
    Ok(json_inputs(state, view)
        .await?
        .iter()
        .flat_map(|(block, document)| loop_core::extraction_items(block, document))
        .collect())
}

/// The expert audit's scenarios, from its JSON inputs (the tester's results).
pub async fn audit_scenarios(
    state: &SharedState,
    view: &BlockView,
) -> ApiResult<Vec<loop_core::Scenario>> {
    Ok(json_inputs(state, view)
        .await?
        .iter()
        .flat_map(|(_, document)| loop_core::scenarios(document))
        .collect())
}

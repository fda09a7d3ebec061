//! Runs: create, list, read, events, uploaded files, saved drafts and the
//! post-run reflection.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use factory_core::run::RunDoc;
use factory_core::template::Autonomy;
use factory_core::transitions::RunRequest;
use factory_engine::RunFile;
use factory_store::{RunRecord, kinds};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::SharedState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::templates;

/// Uploads larger than this are refused (they are stored in the database).
/// Drafts are form values, not files.
const MAX_DRAFT_BYTES: usize = 256 * 1024;

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    template: Option<String>,
    /// A run id prefix or text in the params.
    #[serde(default)]
    q: Option<String>,
    /// The `next` cursor of the previous page.
    #[serde(default)]
    before: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

/// The filter a listing asks for; a bad status or cursor is a 400 that says
/// what is accepted.
pub fn run_filter(
    status: Option<&str>,
    template: Option<&str>,
    text: Option<&str>,
    before: Option<&str>,
    limit: u32,
) -> ApiResult<factory_store::RunFilter> {
    let given = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    let status = given(status);
    if let Some(status) = &status
        && !["running", "waiting", "done", "failed"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "bad_status",
            format!("unknown status `{status}`: use running, waiting, done or failed"),
        ));
    }
    let before = match given(before) {
        None => None,
        Some(cursor) => Some(parse_cursor(&cursor).ok_or_else(|| {
            ApiError::bad_request(
                "bad_cursor",
                format!(
                    "`before={cursor}` is not a cursor: pass the `next` value of the previous page"
                ),
            )
        })?),
    };
    Ok(factory_store::RunFilter {
        template: given(template),
        status,
        text: given(text),
        before,
        limit,
    })
}

/// One page of the runs `filter` asks for (`filter.limit` of them) and the
/// cursor of the next page, None on the last: one more run is asked for, to
/// know whether there is a next page without a second query.
pub async fn page_of_runs(
    state: &SharedState,
    filter: &factory_store::RunFilter,
) -> ApiResult<(Vec<factory_store::RunListing>, Option<String>)> {
    let page = filter.limit as usize;
    let mut found = state
        .store
        .find_runs(&factory_store::RunFilter {
            limit: filter.limit + 1,
            ..filter.clone()
        })
        .await?;
    let next = (found.len() > page).then(|| {
        found.truncate(page);
        found.last().map(|l| cursor(&l.run))
    });
    Ok((found, next.flatten()))
}

/// `CREATED_AT:RUN_ID`, the position after which the next page starts.
fn cursor(run: &factory_store::RunSummary) -> String {
    format!("{}:{}", run.created_at, run.run_id)
}

fn parse_cursor(cursor: &str) -> Option<(factory_core::run::Millis, String)> {
    let (at, id) = cursor.split_once(':')?;
    if id.is_empty() {
        return None;
    }
    Some((at.parse().ok()?, id.to_string()))
}

pub async fn list(
    State(state): State<SharedState>,
    Query(query): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let filter = run_filter(
        query.status.as_deref(),
        query.template.as_deref(),
        query.q.as_deref(),
        query.before.as_deref(),
        limit,
    )?;
    let (found, next) = page_of_runs(&state, &filter).await?;
    let runs: Vec<Value> = found
        .into_iter()
        .map(|l| {
            json!({
                "run_id": l.run.run_id,
                "template_id": l.run.template_id,
                "status": l.run.status,
                "started_by": l.started_by,
                "created_at": l.run.created_at,
                "updated_at": l.run.updated_at,
            })
        })
        .collect();
    Ok(Json(json!({ "runs": runs, "next": next })))
}

/// An uploaded input file, inline.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upload {
    pub name: String,
    pub content_base64: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRun {
    pub template: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
    #[serde(default)]
    pub autonomy_profile: Option<String>,
    /// Per-block autonomy for this run only.
    #[serde(default)]
    pub overrides: BTreeMap<String, Autonomy>,
    #[serde(default)]
    pub models: BTreeMap<String, String>,
    #[serde(default)]
    pub default_model: Option<String>,
    /// Sampling for llm blocks that set none: temperature, top_p, seed, stop.
    #[serde(default)]
    pub sampling: BTreeMap<String, Value>,
    /// Blocks of the run running at once across all workers (0: no limit).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Run every block anew: no memoized attempt stands in for one.
    #[serde(default)]
    pub no_cache: bool,
    #[serde(default)]
    pub files: Vec<Upload>,
}

/// Metadata of an uploaded file, as kept in the run's records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadMeta {
    pub name: String,
    pub hash: String,
    pub size: u64,
}

pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateRun>,
) -> ApiResult<(StatusCode, Json<RunDoc>)> {
    let doc = create_run(&state, &caller, body).await?;
    Ok((StatusCode::CREATED, Json(doc)))
}

/// Checks and decodes the uploaded files: plain, unique names, content
/// within `max_bytes` each.
fn uploads_of(files: &[Upload], max_bytes: usize) -> ApiResult<Vec<RunFile>> {
    let mut decoded: Vec<RunFile> = Vec::new();
    for file in files {
        let name = file.name.trim();
        if let Some(problem) = factory_engine::file_name_problem(name) {
            return Err(ApiError::unprocessable("bad_file_name", problem));
        }
        if decoded.iter().any(|other| other.name == name) {
            return Err(ApiError::unprocessable(
                "duplicate_file",
                format!("two files are named `{name}`: give each file its own name"),
            ));
        }
        // Base64 is 4 bytes per 3: refuse an oversize file before decoding it.
        let decoded_estimate = file.content_base64.trim().len() / 4 * 3;
        if decoded_estimate > max_bytes + 3 {
            return Err(file_too_large(name, decoded_estimate, max_bytes));
        }
        let content = base64::engine::general_purpose::STANDARD
            .decode(file.content_base64.trim())
            .map_err(|e| {
                ApiError::unprocessable(
                    "bad_file_content",
                    format!("file `{name}`: `content_base64` is not base64 ({e})"),
                )
            })?;
        if content.len() > max_bytes {
            return Err(file_too_large(name, content.len(), max_bytes));
        }
        decoded.push(RunFile {
            name: name.to_string(),
            content,
        });
    }
    Ok(decoded)
}

fn file_too_large(name: &str, size: usize, max_bytes: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "file_too_large",
        format!(
            "file `{name}` is about {size} bytes; the limit is {max_bytes} per file (`factory serve --max-upload-mb`)"
        ),
    )
}

/// Creates a run with its files in one commit, then starts driving it.
pub async fn create_run(
    state: &SharedState,
    caller: &Caller,
    body: CreateRun,
) -> ApiResult<RunDoc> {
    let entry = templates::find(state, &body.template).await?;
    let files = uploads_of(&body.files, state.config.max_upload_bytes)?;
    let request = RunRequest {
        run_id: String::new(),
        params: body.params,
        autonomy_profile: body.autonomy_profile.filter(|p| !p.is_empty()),
        overrides: body.overrides,
        models: body.models,
        default_model: body.default_model.filter(|m| !m.is_empty()),
        sampling: body.sampling,
        max_concurrency: body.max_concurrency,
        no_cache: body.no_cache,
        ratings: Vec::new(),
    };
    let path = entry.path_buf();
    let doc = state
        .engine
        .create_run_with_files(
            &caller.actor,
            &entry.source,
            path.as_deref(),
            request,
            &files,
        )
        .await?;
    state.supervisor.kick(&doc.run_id);
    Ok(doc)
}

#[derive(Debug, Deserialize)]
pub struct RunQuery {
    #[serde(default)]
    history: Option<String>,
}

/// The hot read: the stored JSON text goes out as it is, without parsing
/// (a copy kept at the run's current version when there is one); an id
/// prefix is resolved only when the full id is not found.
/// `?history=none` leaves every block's attempts out (their rows are not
/// read): a large run's state for polling, with a block's attempts from
/// [`get_block`] on demand.
pub async fn get(
    State(state): State<SharedState>,
    Path(run): Path<String>,
    Query(query): Query<RunQuery>,
) -> ApiResult<Response> {
    let history = match query.history.as_deref().map(str::trim) {
        None | Some("" | "all") => factory_store::History::All,
        Some("none") => factory_store::History::None,
        Some(other) => {
            return Err(ApiError::bad_request(
                "bad_history",
                format!("`history={other}`: use `all` (the default) or `none`"),
            ));
        }
    };
    // The version first (one row): the copy kept at that version is served
    // as it is; otherwise the run is read and kept (see `doc_cache`).
    let (run_id, version) = match state.store.run_version(&run).await? {
        Some(version) => (run, version),
        None => {
            let run_id = state.store.resolve_run_id(&run).await?;
            let version = state
                .store
                .run_version(&run_id)
                .await?
                .ok_or_else(|| factory_store::StoreError::RunNotFound(run_id.clone()))?;
            (run_id, version)
        }
    };
    let body = match state.docs.get(&run_id, history, version) {
        Some(body) => body,
        None => {
            let body = axum::body::Bytes::from(state.store.load_run_json(&run_id, history).await?);
            state.docs.put(&run_id, history, version, body.clone());
            body
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// One block's state with all its attempts, read from its own rows: what
/// it costs does not depend on the run's size. An unknown block is a 404
/// that lists the run's blocks.
pub async fn get_block(
    State(state): State<SharedState>,
    Path((run, block)): Path<(String, String)>,
) -> ApiResult<Response> {
    let body = match state.store.load_block_json(&run, &block).await? {
        Some(body) => body,
        None => {
            let run_id = state.store.resolve_run_id(&run).await?;
            match state.store.load_block_json(&run_id, &block).await? {
                Some(body) => body,
                // Says which blocks there are.
                None => {
                    return Err(super::blocks::block_view(&state, &run_id, &block)
                        .await
                        .err()
                        .unwrap_or_else(|| {
                            ApiError::not_found(
                                "unknown_block",
                                format!("run `{run_id}` has no block `{block}`"),
                            )
                        }));
                }
            }
        }
    };
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    #[serde(default)]
    after: u64,
}

pub async fn events(
    State(state): State<SharedState>,
    Path(run): Path<String>,
    Query(query): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let run_id = state.store.resolve_run_id(&run).await?;
    let records = state.store.events(&run_id, query.after).await?;
    Ok(Json(json!({ "run_id": run_id, "events": records })))
}

pub async fn uploads(state: &SharedState, run_id: &str) -> ApiResult<Vec<UploadMeta>> {
    let records = state.store.records(run_id, kinds::UPLOAD).await?;
    Ok(records
        .into_iter()
        .filter_map(|r| serde_json::from_value(r.body).ok())
        .collect())
}

pub async fn files(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let run_id = state.store.resolve_run_id(&run).await?;
    Ok(Json(json!({ "files": uploads(&state, &run_id).await? })))
}

pub async fn file(
    State(state): State<SharedState>,
    Path((run, name)): Path<(String, String)>,
) -> ApiResult<Response> {
    let run_id = state.store.resolve_run_id(&run).await?;
    let meta = uploads(&state, &run_id)
        .await?
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            ApiError::not_found(
                "file_not_found",
                format!("run `{run_id}` has no uploaded file `{name}`"),
            )
        })?;
    let content = state.store.get_blob(&meta.hash).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        content,
    )
        .into_response())
}

async fn run_template(state: &SharedState, run: &str) -> ApiResult<(String, RunDoc)> {
    let run_id = state.store.resolve_run_id(run).await?;
    let stored = state.store.load_run(&run_id).await?;
    Ok((run_id, stored.doc))
}

pub async fn drafts(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let (run_id, _) = run_template(&state, &run).await?;
    let records = state.store.records(&run_id, kinds::DRAFT).await?;
    let drafts: serde_json::Map<String, Value> =
        records.into_iter().map(|r| (r.key, r.body)).collect();
    Ok(Json(json!({ "drafts": drafts })))
}

fn check_key(key: &str) -> ApiResult<()> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "bad_key",
            format!("draft key `{key}`: use 1–128 characters from a–z, 0–9, `-`, `_`, `.`, `:`"),
        ))
    }
}

/// Saves a form's values with the run, so they survive a page refresh and
/// follow the operator to another browser.
pub async fn put_draft(
    State(state): State<SharedState>,
    caller: Caller,
    Path((run, key)): Path<(String, String)>,
    ApiJson(body): ApiJson<Value>,
) -> ApiResult<StatusCode> {
    check_key(&key)?;
    let size = serde_json::to_vec(&body).map_err(ApiError::internal)?.len();
    if size > MAX_DRAFT_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "draft_too_large",
            format!("a draft is at most {MAX_DRAFT_BYTES} bytes; this one is {size}"),
        ));
    }
    let (run_id, doc) = run_template(&state, &run).await?;
    state
        .store
        .put_record(&RunRecord {
            run_id,
            template_id: doc.template_id,
            kind: kinds::DRAFT.to_string(),
            key,
            actor: caller.actor,
            at: factory_engine::now_ms(),
            body,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The four post-run questions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reflection {
    pub worked: String,
    pub broke: String,
    pub change: String,
    pub automate: String,
}

pub const REFLECTION_QUESTIONS: [(&str, &str); 4] = [
    ("worked", "What worked?"),
    ("broke", "What broke?"),
    ("change", "What should change in the template?"),
    ("automate", "What should be automated next?"),
];

pub async fn reflection(
    State(state): State<SharedState>,
    Path(run): Path<String>,
) -> ApiResult<Json<Value>> {
    let (run_id, _) = run_template(&state, &run).await?;
    let records = state.store.records(&run_id, kinds::REFLECTION).await?;
    Ok(Json(json!({ "reflection": records.into_iter().next() })))
}

pub async fn put_reflection(
    State(state): State<SharedState>,
    caller: Caller,
    Path(run): Path<String>,
    ApiJson(body): ApiJson<Reflection>,
) -> ApiResult<StatusCode> {
    let (run_id, doc) = run_template(&state, &run).await?;
    if !doc.status.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "run_not_finished",
            format!(
                "run `{run_id}` is {}; the reflection is written once it is done or failed",
                doc.status.as_str()
            ),
        ));
    }
    if [&body.worked, &body.broke, &body.change, &body.automate]
        .iter()
        .all(|a| a.trim().is_empty())
    {
        return Err(ApiError::unprocessable(
            "empty_reflection",
            "answer at least one of the four questions (worked, broke, change, automate)",
        ));
    }
    state
        .store
        .put_record(&RunRecord {
            run_id,
            template_id: doc.template_id,
            kind: kinds::REFLECTION.to_string(),
            key: "reflection".to_string(),
            actor: caller.actor,
            at: factory_engine::now_ms(),
            body: serde_json::to_value(body).map_err(ApiError::internal)?,
        })
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

//! Black-box tests of `factory serve`: the real server on port 0 against a
//! fresh database, driven over HTTP (api.rs) and from headless Chromium
//! (browser.rs).

mod api;
mod browser;
mod feedback_loop;
mod hardening;
mod trust;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use factory_core::consensus::TesterRole;
use factory_core::transitions::Policy;
use factory_engine::EngineConfig;
use factory_server::auth::Role;
use factory_server::{RunningServer, ServerConfig};
use factory_store::Store;
use serde_json::{Value, json};

/// A gated command block whose output names its attempt and corrections
/// (so two attempts differ), a block after it, and a second template with a
/// slow block for the shutdown test.
pub const REVIEW_TEMPLATE: &str = r#"{
  "id": "review-demo", "name": "Review demo", "version": "1.0.0",
  "description": "A draft a person reviews, then a publish step.",
  "params": { "title": { "required": true, "description": "Title of the draft" } },
  "autonomy_profiles": { "hands-off": { "description": "No gates", "default": "auto" } },
  "blocks": [
    { "id": "draft", "name": "Write the draft", "layer": "L0", "type": "build", "runtime": "command",
      "description": "Writes a Markdown draft; a reviewer approves it.",
      "inputs": { "config": { "command": ["sh", "-c",
        "printf '# %s\\n\\nAttempt %s.\\n' \"$FACTORY_PARAM_TITLE\" \"$FACTORY_ATTEMPT\" > \"$FACTORY_OUTPUT_DIR/draft.md\"; if [ -n \"$FACTORY_CORRECTIONS\" ]; then printf '\\nFixed: %s\\n' \"$(cat \"$FACTORY_CORRECTIONS\" | tr -d '\\n' | cut -c1-300)\" >> \"$FACTORY_OUTPUT_DIR/draft.md\"; fi; for f in \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/uploads/*.txt; do if [ -f \"$f\" ]; then printf '\\nSource: %s\\n' \"$(cat \"$f\")\" >> \"$FACTORY_OUTPUT_DIR/draft.md\"; fi; done"] }, "files": ["*.txt"] },
      "outputs": { "artifacts": [{ "key": "draft", "path": "draft.md", "format": "md" }] },
      "execution": { "human_gate": "after", "max_retries": 0, "separate_reviewer": true } },
    { "id": "publish", "name": "Publish", "layer": "L1", "type": "build", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "draft", "key": "draft" }], "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }
  ]
}"#;

/// A review page whose gate asks for a separate reviewer.
pub const GUARDED_TEMPLATE: &str = r#"{
  "id": "guarded-review", "name": "Guarded review", "version": "1.0.0",
  "blocks": [
    { "id": "extract", "name": "Extract", "layer": "L0", "type": "extract", "runtime": "builtin",
      "inputs": { "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "facts", "path": "facts.json", "format": "json" }] } },
    { "id": "review", "name": "Review", "layer": "L1", "type": "validate", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "extract", "key": "facts" }], "config": { "builtin": "review-page", "page": "extraction-review" } },
      "outputs": { "artifacts": [{ "key": "review-url", "path": "url.txt", "format": "url" }] },
      "execution": { "human_gate": "after", "separate_reviewer": true } }
  ]
}"#;

pub const SLOW_TEMPLATE: &str = r#"{
  "id": "slow-demo", "name": "Slow demo", "version": "1.0.0",
  "blocks": [
    { "id": "slow", "name": "Slow", "layer": "L0", "type": "build", "runtime": "builtin", "timeout": 60000,
      "inputs": { "config": { "builtin": "sleep", "ms": 1500 } },
      "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } },
    { "id": "after", "name": "After", "layer": "L1", "type": "build", "runtime": "builtin",
      "inputs": { "depends": [{ "block": "slow", "key": "out" }], "config": { "builtin": "noop" } },
      "outputs": { "artifacts": [{ "key": "out", "path": "out.txt", "format": "text" }] } }
  ]
}"#;

/// A lens (Pattern 3): `perspective` fans out over four angles (command
/// steps quoting the past ratings they are handed), `brief` rolls them up;
/// ratings key on `entity`. One rating of 1 drops a perspective; a mean
/// below 3 sends it to a person.
pub const LENS_TEMPLATE: &str = r#"{
  "id": "lens-demo", "name": "Lens demo", "version": "1.0.0",
  "params": { "entity": { "required": true },
              "perspectives": { "default": ["Positioning", "Gap analysis", "Competitive landscape", "Partnership risk"] } },
  "blocks": [
    { "id": "perspective", "name": "Perspective", "layer": "L1", "type": "research", "runtime": "command",
      "lifecycle": { "mode": "on-demand" },
      "inputs": { "config": { "command": ["sh", "-c", "printf '# %s on %s\\n\\nPast ratings: %s\\n' \"$FACTORY_PERSPECTIVE\" \"$FACTORY_PARAM_ENTITY\" \"${FACTORY_FEEDBACK:-none}\" > \"$FACTORY_OUTPUT_DIR/view.md\""] } },
      "fan_out": { "over": { "param": "perspectives" }, "need": { "at_least": 2 } },
      "lens": { "aggregates": ["entity"], "feedback_loop": true, "drop_below": 2, "min_ratings": 1, "review_below": 3 },
      "outputs": { "artifacts": [{ "key": "view", "path": "view.md", "format": "md" }] } },
    { "id": "brief", "name": "Brief", "layer": "L2", "type": "build", "runtime": "command",
      "inputs": { "depends": [{ "block": "perspective", "key": "view" }],
                  "config": { "command": ["sh", "-c", "cat \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/*/view.md > \"$FACTORY_OUTPUT_DIR/brief.md\""] } },
      "lens": { "aggregates": ["entity"], "feedback_loop": true },
      "outputs": { "artifacts": [{ "key": "brief", "path": "brief.md", "format": "md" }] } }
  ]
}"#;

/// A server on a fresh SQLite file, with one token per role.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub base: String,
    pub store: Arc<dyn Store>,
    pub db: PathBuf,
    pub templates: PathBuf,
    pub tokens: std::collections::BTreeMap<&'static str, String>,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    /// Notification channels and rules the server sends by, if any.
    notify: Option<Arc<factory_notify::Notifications>>,
}

pub fn engine_config(work: &Path, llm: Option<factory_runtime::llm::LlmSettings>) -> EngineConfig {
    EngineConfig {
        policy: Policy {
            retry_base_ms: 20,
            retry_max_ms: 200,
            lease_ms: 2_000,
        },
        work_root: work.to_path_buf(),
        actor: "server".to_string(),
        llm: llm.map(Arc::new),
        ..EngineConfig::default()
    }
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::start_with(None).await
    }

    pub async fn start_with(llm: Option<factory_runtime::llm::LlmSettings>) -> TestServer {
        TestServer::start_on(None, llm, None).await
    }

    /// With notification channels and rules (the server runs the notifier).
    pub async fn start_notifying(notifications: factory_notify::Notifications) -> TestServer {
        TestServer::start_on(None, None, Some(Arc::new(notifications))).await
    }

    /// On a fresh PostgreSQL database instead of a SQLite file.
    pub async fn start_postgres() -> TestServer {
        TestServer::start_postgres_with(None).await
    }

    pub async fn start_postgres_with(llm: Option<factory_runtime::llm::LlmSettings>) -> TestServer {
        let url = factory_store::testing::fresh_postgres_database().await;
        TestServer::start_on(Some(url), llm, None).await
    }

    /// On the store at `url` (a PostgreSQL URL behind a test proxy, say).
    pub async fn start_on_url(url: String) -> TestServer {
        TestServer::start_on(Some(url), None, None).await
    }

    async fn start_on(
        url: Option<String>,
        llm: Option<factory_runtime::llm::LlmSettings>,
        notify: Option<Arc<factory_notify::Notifications>>,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let templates = dir.path().join("templates");
        std::fs::create_dir_all(&templates).unwrap();
        std::fs::write(templates.join("review.json"), REVIEW_TEMPLATE).unwrap();
        std::fs::write(templates.join("slow.json"), SLOW_TEMPLATE).unwrap();
        let db = dir.path().join("factory.db");
        let url = url.unwrap_or_else(|| db.to_string_lossy().into_owned());
        let store: Arc<dyn Store> = Arc::from(factory_store::open(&url).await.unwrap());
        let mut tokens = std::collections::BTreeMap::new();
        for (name, role) in [
            ("viewer", Role::Viewer),
            ("reviewer", Role::Reviewer),
            ("operator", Role::Operator),
            ("admin", Role::Admin),
        ] {
            // The reviewer's reviews count as a team member's; nobody else votes.
            let tester_role = (role == Role::Reviewer).then_some(TesterRole::Team);
            let (secret, _) =
                factory_server::auth::create_token(store.as_ref(), name, role, "test", tester_role)
                    .await
                    .unwrap();
            tokens.insert(name, secret);
        }
        let mut test = TestServer {
            server: None,
            base: String::new(),
            store,
            db,
            templates,
            tokens,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: dir,
            notify,
        };
        test.boot(llm).await;
        test
    }

    /// Starts (or restarts) the server process part on the same database.
    pub async fn boot(&mut self, llm: Option<factory_runtime::llm::LlmSettings>) {
        let config = ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            templates_dir: Some(self.templates.clone()),
            scan_interval: Duration::from_millis(100),
            shutdown_grace: Duration::from_secs(20),
            ..ServerConfig::default()
        };
        let work = self._dir.path().join("work");
        let engine = EngineConfig {
            notifications: self.notify.clone(),
            ..engine_config(&work, llm)
        };
        let server = factory_server::start(self.store.clone(), engine, config)
            .await
            .unwrap();
        self.base = format!("http://{}", server.addr);
        self.server = Some(server);
    }

    pub async fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await.unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        role: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let builder = self.http.request(method, self.url(path));
        match role {
            Some(role) => builder.bearer_auth(&self.tokens[role]),
            None => builder,
        }
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        role: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self.request(method, path, Some(role));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `GET path` as `role`: the status and the body as text.
    pub async fn call_text(&self, path: &str, role: &str) -> (u16, String) {
        let response = self
            .request(reqwest::Method::GET, path, Some(role))
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// Registers `template` through the API, as an admin.
    pub async fn register_template(&self, template: &Value) {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/templates",
                "admin",
                Some(json!({ "template": template })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Creates a run of `template` with `params`, as an operator; its id.
    pub async fn start_run(&self, template: &str, params: Value) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/runs",
                "operator",
                Some(json!({ "template": template, "params": params })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["run_id"].as_str().unwrap().to_string()
    }

    pub async fn create_review_run(&self, title: &str) -> String {
        let (status, body) = self
            .call(
                reqwest::Method::POST,
                "/api/v1/runs",
                "operator",
                Some(json!({ "template": "review-demo", "params": { "title": title } })),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["run_id"].as_str().unwrap().to_string()
    }

    pub async fn doc(&self, run: &str) -> Value {
        let (status, doc) = self
            .call(
                reqwest::Method::GET,
                &format!("/api/v1/runs/{run}"),
                "viewer",
                None,
            )
            .await;
        assert_eq!(status, 200, "{doc}");
        doc
    }

    /// Polls the API (tests only; the pages use SSE) until `check` holds.
    pub async fn wait_for(&self, run: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        self.poll(&format!("/api/v1/runs/{run}"), what, check).await
    }

    /// Polls `GET path` as a viewer until `check` holds on its JSON body.
    pub async fn poll(&self, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..300 {
            let (status, body) = self.call(reqwest::Method::GET, path, "viewer", None).await;
            assert_eq!(status, 200, "GET {path}: {body}");
            if check(&body) {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("timed out waiting for {what}: {last}");
    }
}

pub fn block_status(doc: &Value, block: &str) -> String {
    doc["blocks"][block]["status"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

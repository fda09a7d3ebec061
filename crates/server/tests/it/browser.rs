//! The workbench in headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `.ci/run` installs) against the real server.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use reqwest::Method;
use serde_json::{Value, json};

use crate::{TestServer, block_status};

struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn browser() -> Browser {
    browser_in(false).await
}

/// A browser whose pages see `prefers-color-scheme: dark` (or light: the
/// scheme is set either way, whatever the machine prefers).
async fn browser_in(dark: bool) -> Browser {
    let driver_path =
        std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&driver_path).exists() && std::path::Path::new(&chromium).exists(),
        "browser tests need Debian's chromium and chromium-driver: apt-get install chromium chromium-driver (.ci/run does)"
    );
    let port = free_port();
    let driver = Command::new(&driver_path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let profile = tempfile::tempdir().unwrap();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1440,1000",
                format!("--blink-settings=preferredColorScheme={}", if dark { 0 } else { 1 }),
                format!("--user-data-dir={}", profile.path().display()),
            ]
        }),
    );
    let url = format!("http://127.0.0.1:{port}");
    let mut last_error = String::new();
    for _ in 0..100 {
        match ClientBuilder::rustls()
            .expect("rustls client")
            .capabilities(capabilities.clone())
            .connect(&url)
            .await
        {
            Ok(client) => {
                return Browser {
                    client,
                    driver,
                    _profile: profile,
                };
            }
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot start a browser session: {last_error}");
}

/// Polls a JavaScript condition in the page.
async fn until(client: &Client, what: &str, script: &str) {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if last == Value::Bool(true) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = client
        .execute(
            "return location.href + '\\n' + document.body.innerText;",
            vec![],
        )
        .await
        .unwrap_or_default();
    panic!(
        "timed out waiting for {what} (last {last}); page:\n{}",
        text.as_str().unwrap_or("")
    );
}

async fn type_into(client: &Client, selector: &str, text: &str) {
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no `{selector}`: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// The text of the first element `selector` finds. Live updates may
/// replace the element between finding it and reading it (a stale
/// reference), so a stale read finds it again, a few times at most.
async fn text_of(client: &Client, selector: &str) -> String {
    let mut tries = 0;
    loop {
        let element = client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("no `{selector}`: {e}"));
        match element.text().await {
            Ok(text) => return text,
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::StaleElementReference
                    && tries < 20 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("reading `{selector}`: {e}"),
        }
    }
}

async fn click(client: &Client, selector: &str) {
    client
        .find(Locator::Css(selector))
        .await
        .unwrap_or_else(|e| panic!("no `{selector}`: {e}"))
        .click()
        .await
        .unwrap();
}

async fn mark_page(client: &Client) {
    client
        .execute("window.__sameDocument = true; return true;", vec![])
        .await
        .unwrap();
}

async fn still_same_page(client: &Client) -> bool {
    client
        .execute("return window.__sameDocument === true;", vec![])
        .await
        .unwrap()
        == Value::Bool(true)
}

async fn login(client: &Client, t: &TestServer, role: &str, next: &str) {
    client
        .goto(&t.url(&format!("/login?token={}&next={next}", t.tokens[role])))
        .await
        .unwrap();
}

/// axe-core, vendored from npm (see `tests/fixtures/axe-core/README.md`).
const AXE: &str = include_str!("../fixtures/axe-core/axe.min.js");

/// Runs axe-core on the page and fails on any critical or serious
/// violation, naming the rule, what it asks and the first elements.
async fn accessible(client: &Client, page: &str) {
    client
        .execute(
            &format!("if (!window.axe) {{ {AXE} }} return true;"),
            vec![],
        )
        .await
        .unwrap();
    let found = client
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document, { resultTypes: ['violations'] })
               .then(r => done(r.violations
                 .filter(v => v.impact === 'critical' || v.impact === 'serious')
                 .map(v => `${v.impact} ${v.id}: ${v.help} (${v.nodes.length}×, e.g. ${v.nodes.slice(0, 3).map(n => n.target.join(' ')).join(' | ')})`)))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .unwrap();
    let found: Vec<String> = serde_json::from_value(found).unwrap();
    assert!(
        found.is_empty(),
        "axe-core on {page}:\n{}",
        found.join("\n")
    );
}

/// Saves a screenshot (when `FACTORY_SCREENSHOTS_DIR` is set) of a page
/// that has passed the accessibility audit.
async fn screenshot(client: &Client, name: &str) {
    screenshot_at(client, name, "body").await;
}

/// [`screenshot`] with the first element `selector` finds at the top.
async fn screenshot_at(client: &Client, name: &str, selector: &str) {
    accessible(client, name).await;
    let _ = client
        .execute(
            &format!("document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); document.querySelector({selector:?}).scrollIntoView(); return true;"),
            vec![],
        )
        .await;
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    if let Ok(dir) = std::env::var("FACTORY_SCREENSHOTS_DIR") {
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_and_reviewers_drive_a_run_from_the_browser() {
    let t = TestServer::start().await;
    let b = browser().await;
    let c = &b.client;

    // An operator creates a run from the form, with an input file.
    login(c, &t, "operator", "/").await;
    until(
        c,
        "the runs page",
        "return document.querySelector('#new-run') !== null;",
    )
    .await;
    let uploads = tempfile::tempdir().unwrap();
    let upload = uploads.path().join("source.txt");
    std::fs::write(&upload, "uploaded source text").unwrap();
    type_into(c, "input[name='param.title']", "Browser run").await;
    type_into(c, "input[type=file]", &upload.display().to_string()).await;
    click(c, "#new-run button[type=submit]").await;
    until(c, "the run page", "return location.pathname.startsWith('/runs/') && document.querySelector('#pipeline') !== null;").await;
    let run = c
        .current_url()
        .await
        .unwrap()
        .path()
        .trim_start_matches("/runs/")
        .to_string();
    let (_, files) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/files"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(
        files["files"][0]["size"], 20,
        "the upload was stored with the run: {files}"
    );
    until(c, "the gate", "return document.querySelector(\"a.block[data-block='draft']\").dataset.status === 'waiting';").await;

    // A reviewer rejects from the QA panel and sees the re-run live.
    login(c, &t, "reviewer", &format!("/runs/{run}/blocks/draft")).await;
    until(
        c,
        "the block workbench",
        "return document.querySelector('#reject-form') !== null;",
    )
    .await;
    mark_page(c).await;
    type_into(c, "#reject-form textarea", "Say which quarter").await;
    click(c, "#reject-form button").await;
    until(c, "attempt 2 at the gate", "return document.querySelector('#outputs').textContent.includes('#2') && document.querySelector('#block-status').textContent === 'waiting';").await;
    assert!(still_same_page(c).await, "updated without a reload");
    until(
        c,
        "the attempt-diff form, live with the second attempt",
        "return document.querySelector('#outputs form.diff-form select[name=b]') !== null;",
    )
    .await;
    assert!(
        still_same_page(c).await,
        "the diff form came without a reload"
    );
    let qa = text_of(c, "#qa").await;
    assert!(qa.contains("rejected by user:reviewer"), "{qa}");
    let outputs = text_of(c, "#outputs").await;
    assert!(
        outputs.contains("Say which quarter"),
        "the re-run used the feedback: {outputs}"
    );

    // A half-written rejection survives a refresh (saved to the run).
    type_into(c, "#reject-form textarea", "half a thought").await;
    t.poll(
        &format!("/api/v1/runs/{run}/drafts"),
        "the half-written feedback saved to the run",
        |d| d["drafts"]["reject-draft"]["feedback"] == "half a thought",
    )
    .await;
    c.refresh().await.unwrap();
    until(
        c,
        "the draft restored",
        "return document.querySelector('#reject-form textarea').value === 'half a thought';",
    )
    .await;
    // The state in words: who may decide, and who may not (the operator
    // started the run; the gate asks for a separate reviewer).
    let words = text_of(c, "#state-words").await;
    assert!(
        words.contains("Anyone with the reviewer role or above may decide, except operator"),
        "{words}"
    );
    screenshot(c, "block-workbench").await;

    // The tab labels are readable (WCAG contrast ≥ 4.5:1 against what is
    // behind them), are ARIA tabs, and arrow keys move between them.
    let contrast = c
        .execute(
            "const rgb = (s) => s.match(/[\\d.]+/g).slice(0, 4).map(Number);
             const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; }; return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
             const behind = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor); if (c.length < 4 || c[3] > 0) return c; } return [255, 255, 255]; };
             return [...document.querySelectorAll('[role=tab]')].map((b) => {
               const [a, z] = [lum(rgb(getComputedStyle(b).color)), lum(behind(b))];
               return [b.textContent, (Math.max(a, z) + 0.05) / (Math.min(a, z) + 0.05)];
             });",
            vec![],
        )
        .await
        .unwrap();
    // Each attempt says its outcome in words and how long it took.
    let attempts = text_of(c, "p.attempts").await;
    assert!(
        attempts.contains("#1 succeeded · ") && attempts.contains("#2 succeeded · "),
        "{attempts}"
    );
    assert!(
        attempts.contains(" ms") || attempts.contains(" s"),
        "{attempts}"
    );
    let tabs = contrast.as_array().unwrap();
    assert_eq!(tabs.len(), 3, "{contrast}");
    for tab in tabs {
        assert!(
            tab[1].as_f64().unwrap() >= 4.5,
            "tab label contrast: {contrast}"
        );
    }
    let outputs_tab = c.find(Locator::Css("#tab-button-outputs")).await.unwrap();
    assert_eq!(
        outputs_tab.attr("aria-selected").await.unwrap().as_deref(),
        Some("true")
    );
    outputs_tab
        .send_keys(&fantoccini::key::Key::Right.to_string())
        .await
        .unwrap();
    until(
        c,
        "the Logic tab shown by the arrow key, focused and selected",
        "const t = document.getElementById('tab-button-logic');
         return !document.getElementById('tab-logic').hidden && document.getElementById('tab-outputs').hidden
           && document.activeElement === t && t.getAttribute('aria-selected') === 'true' && t.tabIndex === 0;",
    )
    .await;
    let logic = text_of(c, "#tab-logic").await;
    assert!(
        logic.contains("Timeout\n5 min") || logic.contains("Timeout 5 min"),
        "the default timeout (300,000 ms) in minutes: {logic}"
    );

    // The diff between the two attempts.
    c.goto(&t.url(&format!("/runs/{run}/blocks/draft?a=1&b=2")))
        .await
        .unwrap();
    until(
        c,
        "the diff",
        "return document.querySelector('#diff pre.diff .add') !== null;",
    )
    .await;
    let diff = text_of(c, "#diff").await;
    assert!(
        diff.contains("+Attempt 2.") && diff.contains("-Attempt 1."),
        "{diff}"
    );
    screenshot(c, "attempt-diff").await;

    // On the pipeline view, blocks turn done live when the gate is approved.
    c.goto(&t.url(&format!("/runs/{run}"))).await.unwrap();
    until(
        c,
        "live connection",
        "return document.querySelector('#live-status').textContent.includes('live');",
    )
    .await;
    mark_page(c).await;
    // Count how often the page itself is fetched while events arrive.
    c.execute(
        "window.__pageFetches = 0; const real = window.fetch;
         window.fetch = (...args) => { if (String(args[0]) === location.href) window.__pageFetches++; return real(...args); };
         return true;",
        vec![],
    )
    .await
    .unwrap();
    let before = t.doc(&run).await["seq"].as_u64().unwrap();
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/draft/approve"),
            "reviewer",
            Some(json!({"note": "fine"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    until(c, "the run done", "return document.querySelector(\"a.block[data-block='publish']\").dataset.status === 'done' && document.querySelector('[data-run-status]').dataset.runStatus === 'done';").await;
    assert!(still_same_page(c).await, "no reload");

    // The reflection form appeared with the finished run; answers are kept.
    until(
        c,
        "the reflection form",
        "return document.querySelector('#reflection-form') !== null;",
    )
    .await;
    let events = t.doc(&run).await["seq"].as_u64().unwrap() - before;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let fetches = c
        .execute("return window.__pageFetches;", vec![])
        .await
        .unwrap()
        .as_u64()
        .unwrap();
    assert!(events >= 4, "{events} events");
    assert!(
        fetches < events && fetches <= 3,
        "{fetches} page fetches for {events} events: blocks change from the events, refreshes are coalesced"
    );
    screenshot(c, "pipeline-view").await;
    type_into(
        c,
        "#reflection-form textarea[name=worked]",
        "the gate caught a vague draft",
    )
    .await;
    // Voice input: a stand-in for the browser's speech recognition hears one
    // sentence; it is appended to the answer, which is edited before saving.
    // Without the API there is no Dictate button.
    c.execute(
        "window.webkitSpeechRecognition = window.SpeechRecognition = class {
           start() { setTimeout(() => {
             const result = Object.assign([{ transcript: 'the router waited for the audit' }], { isFinal: true });
             this.onresult({ resultIndex: 0, results: [result] });
             this.onend();
           }, 20); }
           stop() { this.onend(); }
         };
         return true;",
        vec![],
    )
    .await
    .unwrap();
    click(c, "#reflection-form button[data-voice-for=broke]").await;
    until(
        c,
        "the dictated words",
        "return document.querySelector('#reflection-form textarea[name=broke]').value === 'the router waited for the audit' && document.querySelector('button[data-voice-for=broke]').getAttribute('aria-pressed') === 'false';",
    )
    .await;
    type_into(c, "#reflection-form textarea[name=broke]", ", twice").await;
    let without = c
        .execute(
            "delete window.SpeechRecognition; delete window.webkitSpeechRecognition;
             const box = document.createElement('div');
             box.innerHTML = '<textarea name=x data-voice></textarea>';
             bindVoice(box);
             return box.querySelectorAll('button').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(without, json!(0), "no speech API, no Dictate button");
    click(c, "#reflection-form button[type=submit]").await;
    t.poll(
        &format!("/api/v1/runs/{run}/reflection"),
        "the reflection saved",
        |r| {
            r["reflection"]["body"]["worked"] == "the gate caught a vague draft"
                && r["reflection"]["body"]["broke"] == "the router waited for the audit, twice"
        },
    )
    .await;

    // Approving from the QA panel, on a second run.
    let second = t.create_review_run("Second").await;
    t.wait_for(&second, "gate", |d| block_status(d, "draft") == "waiting")
        .await;
    c.goto(&t.url(&format!("/runs/{second}/blocks/draft")))
        .await
        .unwrap();
    until(
        c,
        "approve button",
        "return document.querySelector('#approve-form') !== null;",
    )
    .await;
    mark_page(c).await;
    type_into(c, "#approve-form input[name=note]", "ship it").await;
    click(c, "#approve-form button").await;
    until(
        c,
        "done after approval",
        "return document.querySelector('#block-status').textContent === 'done';",
    )
    .await;
    assert!(still_same_page(c).await);
    let doc = t.doc(&second).await;
    assert_eq!(doc["blocks"]["draft"]["decisions"][0]["note"], "ship it");
    assert_eq!(
        doc["blocks"]["draft"]["decisions"][0]["actor"],
        "user:reviewer"
    );

    // The runs home lists both runs; a screenshot of it.
    login(c, &t, "operator", "/").await;
    until(
        c,
        "runs listed",
        &format!("return document.querySelector(\"tr[data-run-id='{second}']\") !== null;"),
    )
    .await;
    screenshot(c, "runs-home").await;

    // A viewer sees the gate but cannot approve, in the page or by calling the API from it.
    let third = t.create_review_run("Third").await;
    t.wait_for(&third, "gate", |d| block_status(d, "draft") == "waiting")
        .await;
    login(c, &t, "viewer", &format!("/runs/{third}/blocks/draft")).await;
    until(
        c,
        "the viewer's workbench",
        "return document.querySelector('#qa') !== null;",
    )
    .await;
    let forms = c.execute("return document.querySelectorAll('#approve-form, #reject-form, #autonomy-form').length;", vec![]).await.unwrap();
    assert_eq!(forms, json!(0), "no action forms for a viewer");
    let status = c
        .execute_async(
            &format!("const done = arguments[0]; fetch('/api/v1/runs/{third}/blocks/draft/approve', {{method: 'POST'}}).then(r => done(r.status));"),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(status, json!(403));
    assert_eq!(block_status(&t.doc(&third).await, "draft"), "waiting");

    // The 31-block clone-factory shape (every block a no-op), stopped at its
    // first gate: the pipeline view of a real template.
    let clone: Value =
        serde_json::from_str(&factory_engine::fixtures::clone_factory_noop()).unwrap();
    let required: serde_json::Map<String, Value> = clone["params"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, spec)| spec["required"] == true)
        .map(|(name, _)| (name.clone(), json!("Marisol Vega")))
        .collect();
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/templates",
            "admin",
            Some(json!({"template": clone})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "clone-factory", "params": required})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let big = body["run_id"].as_str().unwrap().to_string();
    t.wait_for(&big, "the first gate", |d| d["status"] == "waiting")
        .await;
    c.goto(&t.url(&format!("/runs/{big}"))).await.unwrap();
    // For the record (not asserted: timings are a benchmark's business).
    let paint = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             const report = () => {
               const p = performance.getEntriesByType('paint').find(e => e.name === 'first-contentful-paint');
               const n = performance.getEntriesByType('navigation')[0];
               done([p ? Math.round(p.startTime) : null, n ? Math.round(n.responseEnd) : null, n ? n.encodedBodySize : null, n ? n.decodedBodySize : null]);
             };
             requestAnimationFrame(() => setTimeout(report, 300));",
            vec![],
        )
        .await
        .unwrap();
    eprintln!(
        "31-block pipeline page: [first contentful paint ms, response end ms, bytes on the wire, bytes] = {paint}"
    );
    let cards = c
        .execute(
            "return document.querySelectorAll('a.block').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(cards, json!(31), "every block is on the pipeline view");
    let gates = c
        .execute(
            "return document.querySelectorAll('a.block .gate').length;",
            vec![],
        )
        .await
        .unwrap();
    assert!(gates.as_u64().unwrap() >= 5, "gates are marked: {gates}");
    let groups = c
        .execute(
            "return document.querySelectorAll('.group.parallel').length;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        groups.as_u64().unwrap() >= 1,
        "parallel groups are boxed: {groups}"
    );
    // One drawn edge per dependency, each between two drawn blocks.
    let dependencies: std::collections::BTreeSet<(String, String)> = clone["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            let to = b["id"].as_str().unwrap().to_string();
            b["inputs"]["depends"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |d| (d["block"].as_str().unwrap().to_string(), to.clone()))
        })
        .collect();
    let drawn: Vec<(String, String)> = serde_json::from_value(
        c.execute(
            "return [...document.querySelectorAll('svg.graph path.edge')]
               .filter(e => e.getTotalLength() > 0)
               .map(e => [e.dataset.from, e.dataset.to]);",
            vec![],
        )
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(drawn.len(), dependencies.len(), "one edge per dependency");
    assert_eq!(
        drawn.into_iter().collect::<std::collections::BTreeSet<_>>(),
        dependencies
    );
    // Pointing at a block lights up its lineage and dims the rest.
    let lit = c
        .execute(
            "const b = document.querySelector(\"svg.graph a.block[data-block='rubric-builder']\") || document.querySelectorAll('svg.graph a.block')[10];
             b.dispatchEvent(new MouseEvent('mouseover', {bubbles: true}));
             const lit = [...document.querySelectorAll('svg.graph a.block.lit')].length;
             const dim = getComputedStyle(document.querySelector('svg.graph a.block:not(.lit)')).opacity;
             b.dispatchEvent(new MouseEvent('mouseout', {bubbles: true}));
             return [lit, Number(dim), document.querySelectorAll('svg.graph .lit').length];",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        lit[0].as_u64().unwrap() >= 2,
        "the block and its lineage: {lit}"
    );
    assert!(lit[1].as_f64().unwrap() < 0.5, "the rest is dimmed: {lit}");
    assert_eq!(lit[2], json!(0), "cleared when the pointer leaves: {lit}");
    screenshot(c, "pipeline-clone-factory").await;

    b.client.clone().close().await.unwrap();
}

/// The offline example, run by the server: the graph draws one edge per
/// dependency, the timeline shows the quality check's threshold retry and the
/// time the summary waited at its gate, and the first attempt's stderr (the
/// line that explains the retry) is on the block's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offline_example_shows_its_graph_timeline_and_logs() {
    let t = TestServer::start().await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/offline");
    let source = std::fs::read_to_string(example.join("pipeline.json")).unwrap();
    std::fs::write(t.templates.join("offline.json"), &source).unwrap();
    for dir in ["steps", "data"] {
        std::fs::create_dir_all(t.templates.join(dir)).unwrap();
        for entry in std::fs::read_dir(example.join(dir)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), t.templates.join(dir).join(entry.file_name())).unwrap();
        }
    }
    let template: Value = serde_json::from_str(&source).unwrap();
    let run = t
        .start_run(
            template["id"].as_str().unwrap(),
            json!({"title": "Two Cities"}),
        )
        .await;
    t.wait_for(&run, "the summary's gate", |d| d["status"] == "waiting")
        .await;
    // Let the gate wait long enough to be seen on the time axis.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/blocks/summarize/approve"),
            "reviewer",
            Some(json!({"note": "numbers checked"})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let doc = t
        .wait_for(&run, "the run to end", |d| {
            d["status"] == "done" || d["status"] == "failed"
        })
        .await;
    assert_eq!(doc["status"], "done", "{doc}");

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "viewer", &format!("/runs/{run}")).await;
    until(
        c,
        "the run page",
        "return document.querySelector('svg.timeline') !== null;",
    )
    .await;
    let dependencies: usize = template["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["inputs"]["depends"].as_array().map_or(0, Vec::len))
        .sum();
    let edges = c
        .execute(
            "return [...document.querySelectorAll('svg.graph path.edge.met')].filter(e => e.getTotalLength() > 0).length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        edges,
        json!(dependencies),
        "one solid edge per dependency of a finished run"
    );
    let bars = c
        .execute(
            "const bars = (b) => [...document.querySelectorAll(`svg.timeline rect.bar[data-block='${b}']`)];
             return [bars('quality-check').map(r => [r.dataset.attempt || '', r.getAttribute('class')]),
                     bars('summarize').map(r => r.getAttribute('class')),
                     Number(bars('summarize').find(r => r.classList.contains('gate')).getAttribute('width'))];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        bars[0],
        json!([["1", "bar missed"], ["2", "bar succeeded"]]),
        "the threshold retry: {bars}"
    );
    assert_eq!(bars[1], json!(["bar succeeded", "bar gate"]), "{bars}");
    assert!(
        bars[2].as_f64().unwrap() > 2.0,
        "the gate's wait has a length: {bars}"
    );
    screenshot(c, "run-timeline").await;

    c.goto(&t.url(&format!("/runs/{run}/blocks/quality-check?attempt=1")))
        .await
        .unwrap();
    until(
        c,
        "the block page",
        "return document.querySelector('#outputs') !== null;",
    )
    .await;
    let stderr = c
        .execute(
            "const log = document.querySelector(\"details.log[data-stream='stderr']\");
             return log && log.open ? log.querySelector('pre.log').textContent : null;",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        stderr
            .as_str()
            .unwrap_or("")
            .contains("attempt 1: simulating a truncated read"),
        "the first attempt's stderr, open on its page: {stderr}"
    );
    let (s, whole) = t
        .call_text(
            &format!("/api/v1/runs/{run}/blocks/quality-check/logs/stderr?attempt=1"),
            "viewer",
        )
        .await;
    assert_eq!(s, 200);
    assert!(whole.contains("simulating a truncated read"), "{whole}");
    let (s, _) = t
        .call_text(
            &format!("/api/v1/runs/{run}/blocks/quality-check/logs/stdin"),
            "viewer",
        )
        .await;
    assert_eq!(s, 404, "only stdout and stderr");
    screenshot(c, "block-logs").await;

    // The same run again: the summary is answered from the first run's
    // accepted attempt, and its page says where from.
    let again = t
        .start_run(
            template["id"].as_str().unwrap(),
            json!({"title": "Two Cities"}),
        )
        .await;
    t.wait_for(&again, "the summary's gate", |d| d["status"] == "waiting")
        .await;
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{again}/blocks/summarize/approve"),
            "reviewer",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    let doc = t
        .wait_for(&again, "the second run to end", |d| d["status"] == "done")
        .await;
    assert_eq!(
        doc["blocks"]["summarize"]["history"][0]["report"]["reused"]["run_id"],
        run.as_str()
    );
    let page = format!("/runs/{again}/blocks/summarize");
    c.goto(&t.url(&page)).await.unwrap();
    until(
        c,
        "the reused attempt's note",
        "return document.querySelector('#outputs p.reused') !== null;",
    )
    .await;
    let link = c
        .execute(
            "return document.querySelector('#outputs p.reused a').getAttribute('href');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        link,
        json!(format!("/runs/{run}/blocks/summarize?attempt=1")),
        "links to the attempt it came from"
    );
    assert!(text_of(c, "#outputs p.attempts").await.contains("(reused)"));
    screenshot(c, "reused-attempt").await;

    b.client.clone().close().await.unwrap();
}

/// The workbench follows `prefers-color-scheme: dark`, and its pages pass the
/// same accessibility audit (text contrast included) in the dark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_workbench_follows_a_dark_colour_scheme() {
    let t = TestServer::start().await;
    let b = browser_in(true).await;
    let c = &b.client;
    let run = t.create_review_run("Dark").await;
    t.wait_for(&run, "the gate", |d| d["status"] == "waiting")
        .await;
    login(c, &t, "operator", &format!("/runs/{run}")).await;
    until(
        c,
        "the run page",
        "return document.querySelector('svg.graph') !== null;",
    )
    .await;
    let background = c
        .execute(
            "return [matchMedia('(prefers-color-scheme: dark)').matches, getComputedStyle(document.body).backgroundColor];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(background, json!([true, "rgb(17, 20, 24)"]));
    screenshot(c, "pipeline-view-dark").await;
    c.goto(&t.url(&format!("/runs/{run}/blocks/draft")))
        .await
        .unwrap();
    until(
        c,
        "the block page",
        "return document.querySelector('[role=tablist]') !== null;",
    )
    .await;
    screenshot(c, "block-workbench-dark").await;
    c.goto(&t.url("/")).await.unwrap();
    until(
        c,
        "the runs page",
        "return document.querySelector('#new-run') !== null;",
    )
    .await;
    screenshot(c, "runs-home-dark").await;

    b.client.clone().close().await.unwrap();
}

/// Both review pages, submitted from a tester's review link in a real
/// browser: the extraction review with verdicts and a correction, then the
/// expert audit with ratings, an answer, a chat with the clone and a finding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tester_submits_both_review_pages_from_a_review_link() {
    use crate::feedback_loop::{clone_factory_server, run_to};
    let (t, _provider) = clone_factory_server().await;
    let (s, body) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "clone-factory", "params": {"expert_name": "Marisol Vega"}})),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let run = body["run_id"].as_str().unwrap().to_string();
    run_to(&t, &run, "extraction-reviewer").await;
    let b = browser().await;
    let c = &b.client;
    // An operator invites the expert from the run page.
    login(c, &t, "operator", &format!("/runs/{run}")).await;
    until(
        c,
        "the run page",
        "return document.querySelector('#review-link-form') !== null;",
    )
    .await;
    click(c, "#review-links summary").await;
    type_into(c, "#review-link-form input[name=tester]", "samuel-ngu").await;
    c.execute(
        "document.querySelector('#review-link-form select').value = 'expert'; return true;",
        vec![],
    )
    .await
    .unwrap();
    click(c, "#review-link-form button[type=submit]").await;
    until(
        c,
        "the links",
        "return document.querySelectorAll('[data-links] a').length === 2;",
    )
    .await;
    let hrefs = c
        .execute("return [...document.querySelectorAll('[data-links] a')].map(a => a.dataset.page + ' ' + a.getAttribute('href'));", vec![])
        .await
        .unwrap();
    let link = |page: &str| {
        hrefs
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|h| h.as_str()?.strip_prefix(&format!("{page} ")))
            .next()
            .unwrap_or_else(|| panic!("no {page} link in {hrefs}"))
            .to_string()
    };
    // The tester's browser: the operator's cookie is replaced by the link's token.
    c.delete_all_cookies().await.unwrap();
    c.goto(&t.url(&link("extraction-review"))).await.unwrap();
    until(c, "the extraction review", "return document.querySelector('#review-form') !== null && document.getElementById('reviewer').textContent === 'samuel-ngu';").await;
    let voice = r#"tr[data-key="voice-extractor:$.tone.summary"]"#;
    click(c, &format!("{voice} input[value=wrong]")).await;
    type_into(c, &format!("{voice} input[type=text]"), "I use 'Let's GO!'").await;
    click(
        c,
        r#"tr[data-key="soul-extractor:$.expert"] input[value=correct]"#,
    )
    .await;
    // Narrowing the list: by file, by what is marked, by text; a submission
    // still carries every verdict.
    let narrowed = c
        .execute(
            "const set = (id, v) => { const el = document.getElementById(id); el.value = v; el.dispatchEvent(new Event('input')); };
             const visible = () => [...document.querySelectorAll('tr.review-item')].filter(r => !r.hidden).length;
             const all = visible();
             set('filter-source', 'voice-extractor');
             const voice = visible();
             const voiceRows = document.querySelectorAll(\"tr.review-item[data-target='voice-extractor']\").length;
             set('filter-source', '');
             set('filter-status', 'marked');
             const marked = visible();
             const count = document.getElementById('filter-count').textContent;
             set('filter-status', '');
             set('filter-text', 'tone.summary');
             const text = visible();
             set('filter-text', '');
             return [all, voice, voiceRows, marked, count, text, visible()];",
            vec![],
        )
        .await
        .unwrap();
    let all = narrowed[0].as_u64().unwrap();
    assert!(all > 10, "{narrowed}");
    assert_eq!(narrowed[1], narrowed[2], "one file's rows: {narrowed}");
    assert!(narrowed[1].as_u64().unwrap() < all);
    assert_eq!(narrowed[3], json!(2), "the two marked rows: {narrowed}");
    assert_eq!(narrowed[4], json!(format!("2 of {all} items")));
    assert!(narrowed[5].as_u64().unwrap() >= 1 && narrowed[5].as_u64().unwrap() < all);
    assert_eq!(
        narrowed[6],
        json!(all),
        "clearing the filters shows every row"
    );
    click(c, "#review-form input[name=close]").await;
    screenshot(c, "extraction-review").await;
    click(c, "#review-form button[type=submit]").await;
    until(c, "the review to close", "const r = document.querySelector('[data-result]'); return r !== null && r.dataset.gate === 'true';").await;
    // Accepted, then (the extraction router sends it back at once and the
    // voice extractor re-runs with it) resolved.
    until(c, "the finding to appear live", r#"const row = document.querySelector('#findings [data-finding-key="voice-extractor:$.tone.summary"]'); return row !== null && (row.textContent.includes('accepted') || row.textContent.includes('resolved'));"#).await;
    let (_, items) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}"),
            "viewer",
            None,
        )
        .await;
    let items = items["items"].as_array().unwrap();
    assert_eq!(
        items.len(),
        1,
        "only the flagged item is a finding: {items:?}"
    );
    assert_eq!(items[0]["expert_correction"], "I use 'Let's GO!'");
    assert_eq!(items[0]["flagged_by"][0]["tester"], "samuel-ngu");

    // The corrected extraction (v2) is approved as it stands; the same link
    // opens the expert audit once the clone is tested.
    t.wait_for(&run, "the corrected extraction", |d| {
        d["version"] == 2 && block_status(d, "extraction-reviewer") == "waiting"
    })
    .await;
    crate::feedback_loop::approve_extraction_review(&t, &run).await;
    run_to(&t, &run, "expert-audit").await;
    c.goto(&t.url(&link("expert-audit"))).await.unwrap();
    until(
        c,
        "the expert audit",
        "return document.querySelectorAll('fieldset[data-scenario]').length === 5;",
    )
    .await;
    for n in 1..=5 {
        let answer = if n == 5 { "no" } else { "yes" };
        click(
            c,
            &format!(r#"fieldset[data-scenario="s{n}"] input[value={answer}]"#),
        )
        .await;
    }
    type_into(
        c,
        r#"fieldset[data-scenario="s5"] input[type=text]"#,
        "Pause after the number",
    )
    .await;
    type_into(
        c,
        "label[data-question] textarea",
        "Where I explain the anchor",
    )
    .await;
    type_into(
        c,
        "#review-chat-form input[name=message]",
        "How do you open a salary talk?",
    )
    .await;
    click(c, "#review-chat-form button[type=submit]").await;
    until(
        c,
        "the clone's reply",
        "return document.getElementById('review-chat').textContent.includes(\"Let's GO!\");",
    )
    .await;
    click(c, "#audit-form input[name=close]").await;
    screenshot(c, "expert-audit").await;
    click(c, "#audit-form button[type=submit]").await;
    until(c, "the audit to close", "const r = document.querySelector('[data-result]'); return r !== null && r.dataset.gate === 'true';").await;
    let (_, items) = t
        .call(
            Method::GET,
            &format!("/api/v1/improvement-items?run_id={run}&skill_target=clone-compiler"),
            "viewer",
            None,
        )
        .await;
    let finding = &items["items"][0];
    assert_eq!(finding["source_key"], "expert-audit:scenario:s5");
    // Accepted, and routed to the compiler at once (which may already have
    // re-run with it).
    assert!(
        ["accepted", "resolved"].contains(&finding["status"].as_str().unwrap()),
        "{finding}"
    );
    assert_eq!(finding["expert_correction"], "Pause after the number");
    // Scenarios rated "sounds like me" are correct votes, not findings.
    assert_eq!(items["total"], 1);

    // The router sends the audit's finding back (v2 → v3); the convergence
    // page shows v1 (reviewed, never compiled) and v2 (audited).
    t.wait_for(&run, "version 3", |d| d["version"] == 3).await;
    c.goto(&t.url(&format!("/runs/{run}/convergence")))
        .await
        .unwrap();
    until(c, "the convergence page", r#"const row = document.querySelector('tr[data-version="2"]'); return row !== null && row.textContent.includes('80.0%') && row.textContent.includes('superseded');"#).await;
    screenshot(c, "convergence").await;

    b.client.clone().close().await.unwrap();
}

/// The stream example in the workbench: records per state fill in as the
/// steps move items on (the page polls), a failed item shows its error and
/// an operator retries it from the list; a record's page shows its history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streams_records_move_through_their_states_in_the_workbench() {
    let t = TestServer::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../templates");
    std::fs::create_dir_all(t.templates.join("ingest-steps")).unwrap();
    std::fs::copy(
        root.join("ingest-stream.json"),
        t.templates.join("ingest-stream.json"),
    )
    .unwrap();
    std::fs::copy(
        root.join("ingest-steps/step.py"),
        t.templates.join("ingest-steps/step.py"),
    )
    .unwrap();
    let b = browser().await;
    let c = &b.client;
    login(c, &t, "operator", "/streams").await;
    // The server picks the template up within its 2 s catalog look.
    until(
        c,
        "the stream on the index",
        "return document.body.innerText.includes('ingest-stream');",
    )
    .await;
    // Deliveries as the hook stores them (the hook itself is tested with
    // signatures in the CLI's black-box tests).
    let items = [
        (
            "news-1",
            "Human feedback for machine learning pipelines keeps models honest.",
        ),
        (
            "news-2",
            "Review loops let pipelines learn from their operators.",
        ),
        ("recipe", "Flour, water, salt and time make bread."),
    ];
    for (key, text) in items
        .iter()
        .map(|(k, t)| (*k, Some(*t)))
        .chain([("no-text", None)])
    {
        let data = match text {
            Some(text) => json!({"item_id": key, "text": text}),
            None => json!({"item_id": key}),
        };
        t.store
            .receive_record(&factory_store::NewStreamRecord {
                template_id: "ingest-stream",
                block: "intake",
                key,
                state: "received",
                data: &data,
                webhook_id: Some(&format!("msg-{key}")),
                tick: None,
                by: None,
                event: None,
                at: factory_engine::now_ms(),
            })
            .await
            .unwrap();
    }
    c.goto(&t.url("/streams/ingest-stream")).await.unwrap();
    until(
        c,
        "three items scored and one failed",
        "const s = document.querySelector('[data-state=scored]'); const r = document.querySelector('[data-state=received]');\
         return !!s && s.innerText.includes('3 done') && !!r && r.innerText.includes('1 failed');",
    )
    .await;
    until(c, "the failed item's error in the list", "return document.querySelector('tr[data-record=no-text] td.error').innerText.includes('nothing to transcribe');").await;
    screenshot(c, "streams").await;

    click(
        c,
        "tr[data-record=no-text] form[data-action=retry-record] button",
    )
    .await;
    let mut retried = false;
    for _ in 0..100 {
        let (_, reply) = t
            .call(
                Method::GET,
                "/api/v1/records/ingest-stream/no-text",
                "viewer",
                None,
            )
            .await;
        retried = reply["history"].as_array().unwrap().iter().any(|h| {
            h["kind"] == "retried" && h["actor"].as_str().unwrap_or("").contains("operator")
        });
        if retried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        retried,
        "the Retry button did not retry the record as the operator"
    );
    // An operator adds an item by hand; it appears and moves on.
    type_into(
        c,
        "#record-json",
        r#"{"item_id": "typed", "text": "Typed into the workbench about human feedback."}"#,
    )
    .await;
    click(c, "form[data-action=add-record] button").await;
    until(
        c,
        "the typed item scored",
        "const row = document.querySelector('tr[data-record=typed]'); return !!row && row.innerText.includes('scored');",
    )
    .await;
    c.goto(&t.url("/streams/ingest-stream/records/news-1"))
        .await
        .unwrap();
    until(
        c,
        "the record's history",
        "return document.querySelectorAll('.record-history li[data-kind=moved]').length === 4;",
    )
    .await;
    let data = text_of(c, "pre.data").await;
    assert!(
        data.contains("\"embedding\"") && data.contains("\"score\""),
        "{data}"
    );
    screenshot(c, "stream-record").await;

    // A dag-batch template whose cron trigger starts runs (a tick less than
    // a minute old fires at once): the Streams page lists it with the run
    // its firing started, linked.
    let nightly = serde_json::json!({
        "id": "nightly-digest", "name": "Nightly digest", "version": "1",
        "blocks": [{"id": "digest", "name": "Digest", "layer": "L1", "type": "build",
                    "runtime": "builtin", "inputs": {"config": {"builtin": "noop"}},
                    "trigger": {"type": "cron", "cron": "* * * * *", "timezone": "Europe/Paris"}}]
    });
    std::fs::write(
        t.templates.join("nightly-digest.json"),
        serde_json::to_string(&nightly).unwrap(),
    )
    .unwrap();
    c.goto(&t.url("/streams")).await.unwrap();
    until(
        c,
        "the cron trigger's run on the Streams page",
        "const s = document.querySelector('#run-triggers'); return !!s && s.innerText.includes('nightly-digest') && !!s.querySelector('a[href^=\"/runs/\"]');",
    )
    .await;
    let trigger = text_of(c, "#run-triggers").await;
    assert!(
        trigger.contains("cron * * * * *") && trigger.contains("Europe/Paris"),
        "{trigger}"
    );
    screenshot(c, "run-triggers").await;
    click(c, "#run-triggers a[href^='/runs/']").await;
    until(
        c,
        "the started run's page",
        "return location.pathname.startsWith('/runs/') && document.body.innerText.includes('Nightly digest');",
    )
    .await;
}

/// A fan-out run on the workbench: the instances sit in one box in the
/// graph, the group says how many are done, and an
/// instance's page (its id has brackets) shows the item it ran for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_shows_its_instances_as_one_group() {
    let t = TestServer::start().await;
    let command = |id: &str, script: &str, extra: Value| {
        let mut block = json!({
            "id": id, "name": id.replace('-', " "), "layer": "L1", "type": "research", "runtime": "command",
            "inputs": {"config": {"command": ["sh", "-c", script]}},
            "outputs": {"artifacts": [{"key": "view", "path": "view.md", "format": "md"}]},
            "execution": {"max_retries": 0}
        });
        for (key, value) in extra.as_object().unwrap() {
            block[key] = value.clone();
        }
        block
    };
    let template = json!({
        "id": "brief-demo", "name": "Brief demo", "version": "1",
        "params": {"perspectives": {"default": ["Positioning", "Gap analysis", "Competitive landscape", "Partnership risk"]}},
        "blocks": [
            command(
                "perspective",
                "[ \"$FACTORY_ITEM_KEY\" = partnership-risk ] && { echo 'no partner data' >&2; exit 2; }; printf '# %s\\n\\nWhat the %s view of Acme shows.\\n' \"$FACTORY_ITEM\" \"$FACTORY_ITEM_KEY\" > \"$FACTORY_OUTPUT_DIR/view.md\"",
                json!({"fan_out": {"over": {"param": "perspectives"}, "max": 8, "need": {"at_least": 3}}}),
            ),
            command(
                "brief",
                "cat \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/*/view.md > \"$FACTORY_OUTPUT_DIR/view.md\"",
                json!({"layer": "L2", "inputs": {"depends": [{"block": "perspective", "key": "view"}], "config": {"command": ["sh", "-c", "cat \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/*/view.md > \"$FACTORY_OUTPUT_DIR/view.md\""]}}}),
            ),
        ]
    });
    t.register_template(&template).await;
    let run = t.start_run("brief-demo", json!({})).await;
    let doc = t
        .wait_for(&run, "the run to end", |d| d["status"] == "failed")
        .await;
    assert_eq!(block_status(&doc, "perspective"), "done", "3 of 4 suffice");
    assert_eq!(block_status(&doc, "brief"), "done");
    assert_eq!(
        block_status(&doc, "perspective[partnership-risk]"),
        "failed"
    );

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "viewer", &format!("/runs/{run}")).await;
    until(
        c,
        "the instances in the graph",
        "return document.querySelectorAll('svg.graph a.block[data-block^=\"perspective[\"]').length === 4;",
    )
    .await;
    let label = c
        .execute(
            "return [...document.querySelectorAll('svg.graph text.group-label')].map(t => t.textContent).join('|');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(label, json!("instances of perspective"));
    let group = text_of(
        c,
        "svg.graph a.block[data-block='perspective'] text.block-meta",
    )
    .await;
    assert!(group.contains("3/4 done"), "{group}");
    screenshot(c, "fan-out-run").await;

    // An instance's page, reached by its link.
    click(
        c,
        "svg.graph a.block[data-block='perspective[gap-analysis]']",
    )
    .await;
    until(
        c,
        "the instance's page",
        "return document.body.textContent.includes('this is item gap-analysis');",
    )
    .await;
    assert!(
        c.current_url()
            .await
            .unwrap()
            .as_str()
            .contains("/blocks/perspective")
    );
    let (s, body) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/perspective%5Bgap-analysis%5D"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{body}");
    b.client.clone().close().await.unwrap();
}

/// The run page of a lens: a reviewer rates a perspective with the form;
/// the next run's page says how the ratings shaped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lens_run_is_rated_on_its_page_and_the_next_run_shows_the_effect() {
    let t = TestServer::start().await;
    t.register_template(&serde_json::from_str(crate::LENS_TEMPLATE).unwrap())
        .await;
    let run = t
        .start_run("lens-demo", json!({"entity": "Acme Robotics"}))
        .await;
    t.wait_for(&run, "the run to end", |d| d["status"] == "done")
        .await;

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "reviewer", &format!("/runs/{run}")).await;
    let form = "form.rate[data-block='perspective[partnership-risk]']";
    until(
        c,
        "the rating forms",
        "return document.querySelectorAll('form.rate').length === 5;",
    )
    .await;
    c.execute(
        &format!("document.querySelector(\"{form} select\").value = '1';"),
        vec![],
    )
    .await
    .unwrap();
    type_into(
        c,
        &format!("{form} input[name=comment]"),
        "Nothing we did not know",
    )
    .await;
    click(c, &format!("{form} button")).await;
    until(
        c,
        "the rating listed",
        "return (document.querySelector('#run-ratings') || {textContent: ''}).textContent.includes('Nothing we did not know');",
    )
    .await;
    // Another reader finds the landscape weak (through the API).
    let (s, body) = t
        .call(
            Method::POST,
            &format!("/api/v1/runs/{run}/ratings"),
            "operator",
            Some(json!({"block": "perspective[competitive-landscape]", "score": 2, "comment": "Name the competitors"})),
        )
        .await;
    assert_eq!(s, 201, "{body}");

    let next = t
        .start_run("lens-demo", json!({"entity": "Acme Robotics"}))
        .await;
    let doc = t
        .wait_for(&next, "the landscape at its gate", |d| {
            block_status(d, "perspective[competitive-landscape]") == "waiting"
        })
        .await;
    assert!(doc["blocks"].get("perspective[partnership-risk]").is_none());
    c.goto(&t.url(&format!("/runs/{next}"))).await.unwrap();
    until(
        c,
        "the lens panel",
        "return !!document.querySelector('#lens-shaped');",
    )
    .await;
    let shaped = text_of(c, "#lens-shaped").await;
    assert!(
        shaped.contains("partnership-risk was left out: rated 1.0 over 1")
            && shaped.contains("perspective[competitive-landscape] was sent to a person"),
        "{shaped}"
    );
    let table = text_of(c, "table.past-ratings").await;
    assert!(table.contains("Name the competitors"), "{table}");
    screenshot_at(c, "lens-run", "#lens").await;
    b.client.clone().close().await.unwrap();
}

/// The quality dashboard: two runs of a template, the second worse, and a
/// meta-audit of it; its block page shows the block's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quality_dashboard_shows_runs_regressions_and_meta_audits() {
    let t = TestServer::start().await;
    let write = |id: &str, extra: Value| {
        let mut block = json!({
            "id": id, "name": id, "layer": "L0", "type": "build", "runtime": "command",
            "inputs": {"config": {"command": ["sh", "-c", "printf '%s\\n' \"$FACTORY_PARAM_TEXT\" > \"$FACTORY_OUTPUT_DIR/out.md\""]}},
            "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]},
            "execution": {"max_retries": 0}
        });
        for (key, value) in extra.as_object().unwrap() {
            block[key] = value.clone();
        }
        block
    };
    t.register_template(&json!({
        "id": "quality-demo", "name": "Quality demo", "version": "1",
        "params": {"text": {"required": true}},
        "blocks": [
            write("draft", json!({})),
            write("final", json!({"layer": "L1", "inputs": {
                "depends": [{"block": "draft", "key": "out"}],
                "config": {"command": ["sh", "-c", "cat \"$(dirname \"$FACTORY_INPUTS\")\"/inputs/draft/out.md > \"$FACTORY_OUTPUT_DIR/out.md\""]}}})),
        ]
    }))
    .await;
    let good = "Acme Robotics leases 40 picking arms to Pickwell at 4,800 dollars a month. Its installs take 11 days against six weeks. It lost the Globex bid in March over integration support.";
    let generic = "This is a game-changer for everyone. It will unlock your potential every day. We empower teams to achieve more than ever.";
    let mut runs = Vec::new();
    for text in [good, generic] {
        let run = t.start_run("quality-demo", json!({"text": text})).await;
        t.wait_for(&run, "the run to end", |d| d["status"] == "done")
            .await;
        runs.push(run);
    }
    register_meta_audit(&t).await;
    // The good run is audited against the generic one (the generic run's
    // composite is under 5.0: its own meta-audit would stop at the aggregate).
    let meta = t
        .start_run(
            "meta-audit-factory",
            json!({"target_run": runs[0], "baseline_run": runs[1]}),
        )
        .await;
    t.wait_for(&meta, "the scorecard at its gate", |d| {
        block_status(d, "audit-scorecard-publisher") == "waiting"
    })
    .await;

    let (s, history) = t
        .call(
            Method::GET,
            "/api/v1/templates/quality-demo/quality",
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{history}");
    assert_eq!(history["runs"].as_array().unwrap().len(), 2);
    assert_eq!(history["runs"][0]["meta_audit"], meta.as_str());
    assert!(history["runs"][1]["meta_audit"].is_null());
    let regressed: Vec<&str> = history["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["block"].as_str().unwrap())
        .collect();
    assert!(regressed.contains(&"draft"), "{history}");
    let (s, page) = t
        .call_text(
            &format!("/api/v1/runs/{meta}/blocks/audit-scorecard-publisher/artifacts/scorecard"),
            "viewer",
        )
        .await;
    assert_eq!(s, 200);
    assert!(
        page.contains(&format!("Against run <code>{}</code>", runs[1])),
        "{page}"
    );

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "viewer", "/templates/quality-demo/quality").await;
    until(
        c,
        "the dashboard",
        "return !!document.querySelector('#quality-runs');",
    )
    .await;
    let rows = c
        .execute(
            "return document.querySelectorAll('#quality-runs tbody tr').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(rows, json!(2));
    let regressions = text_of(c, "#regressions").await;
    assert!(regressions.contains("draft"), "{regressions}");
    let charts = c
        .execute(
            "return document.querySelectorAll('figure.quality-chart svg').length;",
            vec![],
        )
        .await
        .unwrap();
    assert!(charts.as_u64().unwrap() >= 2, "{charts}");
    let scorecard = c
        .execute("return [...document.querySelectorAll('#quality-runs a')].filter(a => a.textContent === 'scorecard').length;", vec![])
        .await
        .unwrap();
    assert_eq!(scorecard, json!(1));
    screenshot(c, "quality-dashboard").await;

    // The block page shows the block across runs.
    c.goto(&t.url(&format!("/runs/{}/blocks/draft", runs[1])))
        .await
        .unwrap();
    until(
        c,
        "the block's history",
        "return !!document.querySelector('#across-runs svg');",
    )
    .await;
    let points = c
        .execute(
            "return document.querySelectorAll('#across-runs circle').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(points, json!(2));
    b.client.clone().close().await.unwrap();
}

/// A run under the threshold stops the meta-audit at its aggregate, with
/// the reasons in the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meta_audit_of_a_run_under_the_threshold_fails_with_its_reasons() {
    let t = TestServer::start().await;
    t.register_template(&json!({
        "id": "thin", "name": "Thin", "version": "1",
        "blocks": [{"id": "say", "name": "say", "layer": "L0", "type": "build", "runtime": "command",
            "inputs": {"config": {"command": ["sh", "-c", "echo 'This is a game-changer for everyone. It will unlock your potential.' > \"$FACTORY_OUTPUT_DIR/out.md\""]}},
            "outputs": {"artifacts": [{"key": "out", "path": "out.md", "format": "md"}]}}]
    }))
    .await;
    let run = t.start_run("thin", json!({})).await;
    t.wait_for(&run, "the run to end", |d| d["status"] == "done")
        .await;
    register_meta_audit(&t).await;
    let meta = t
        .start_run("meta-audit-factory", json!({"target_run": run}))
        .await;
    let doc = t
        .wait_for(&meta, "the meta-audit to fail", |d| d["status"] == "failed")
        .await;
    assert_eq!(block_status(&doc, "run-aggregate"), "failed");
    assert_eq!(block_status(&doc, "audit-scorecard-publisher"), "blocked");
    let error = doc["blocks"]["run-aggregate"]["error"].as_str().unwrap();
    assert!(error.contains("run_composite"), "{error}");
    let (s, report) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{meta}/blocks/run-aggregate/artifacts/aggregate"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["passed"], false);
    assert!(
        report["reasons"][0]
            .as_str()
            .unwrap()
            .contains("below the threshold 5.0"),
        "{report}"
    );
}

/// Registers `templates/meta-audit-factory.json` with the test server.
async fn register_meta_audit(t: &TestServer) {
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../templates/meta-audit-factory.json"),
    )
    .unwrap();
    t.register_template(&serde_json::from_str(&source).unwrap())
        .await;
}

/// The Gaps panel: gap-analyzer's gaps on its block page while it waits at
/// its gate; a reviewer accepts one with a note, and the panel says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_accepts_a_gap_from_the_gaps_panel() {
    use crate::feedback_loop::clone_factory_server;
    let (t, _provider) = clone_factory_server().await;
    let run = t
        .start_run("clone-factory", json!({"expert_name": "Marisol Vega"}))
        .await;
    crate::feedback_loop::past_the_extraction_review(&t, &run, "gap-analyzer").await;
    let b = browser().await;
    let c = &b.client;
    login(
        c,
        &t,
        "reviewer",
        &format!("/runs/{run}/blocks/gap-analyzer"),
    )
    .await;
    until(
        c,
        "the Gaps panel",
        "return document.querySelectorAll('#gaps li.gap').length === 2;",
    )
    .await;
    let panel = text_of(c, "#gaps").await;
    assert!(
        panel.contains("2 open of 2")
            && panel.contains("The Seven Second Silence has no negotiators count"),
        "{panel}"
    );
    type_into(
        c,
        r#"#gaps li[data-gap="g02"] input[name=note]"#,
        "Recorded calls come after launch",
    )
    .await;
    click(c, r#"#gaps li[data-gap="g02"] button[type=submit]"#).await;
    until(
        c,
        "g02 accepted",
        r#"return (document.querySelector('#gaps li[data-gap="g02"]') || {dataset: {}}).dataset.status === 'accepted';"#,
    )
    .await;
    let panel = text_of(c, "#gaps").await;
    assert!(
        panel.contains("1 open of 2")
            && panel.contains("Accepted by ")
            && panel.contains(": Recorded calls come after launch"),
        "{panel}"
    );
    let doc = t.doc(&run).await;
    assert_eq!(doc["gaps"]["g02"]["status"], "accepted");
    accessible(c, "the block page with gaps").await;
    screenshot_at(c, "gaps-panel", "#gaps").await;
    b.client.clone().close().await.unwrap();
}

/// The META chat on the run page: a reviewer asks about the run and the
/// answer — grounded in the run's brief — appears in the panel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_asks_the_run_page_chat_about_the_run() {
    use crate::feedback_loop::clone_factory_server;
    let (t, _provider) = clone_factory_server().await;
    let run = t
        .start_run("clone-factory", json!({"expert_name": "Marisol Vega"}))
        .await;
    crate::feedback_loop::past_the_extraction_review(&t, &run, "gap-analyzer").await;
    t.wait_for(&run, "the gaps", |d| d["gaps"]["g02"].is_object())
        .await;
    let b = browser().await;
    let c = &b.client;
    login(c, &t, "reviewer", &format!("/runs/{run}")).await;
    type_into(
        c,
        "#run-chat-form textarea[name=message]",
        "What is still open in this run?",
    )
    .await;
    click(c, "#run-chat-form button[type=submit]").await;
    until(
        c,
        "the chat's answer",
        "return document.getElementById('run-chat-messages').textContent.includes('Open gaps: g01, g02.');",
    )
    .await;
    assert!(
        text_of(c, "#run-chat-messages")
            .await
            .contains("What is still open in this run?")
    );
    accessible(c, "the run page with its chat").await;
    screenshot_at(c, "run-chat", "#run-chat").await;
    b.client.clone().close().await.unwrap();
}

/// Notifications: a waiting gate goes to two webhooks; one takes it, the
/// other refuses it for good (410); the Notifications page shows both, an
/// operator sends the failed one again from it, and it is delivered. A
/// viewer may not send again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notifications_page_shows_deliveries_and_sends_a_failed_one_again() {
    use wiremock::matchers::path;
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let receiver = MockServer::start().await;
    Mock::given(path("/team"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&receiver)
        .await;
    Mock::given(path("/ops"))
        .respond_with(ResponseTemplate::new(410).set_body_string("hook disabled"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&receiver)
        .await;
    Mock::given(path("/ops"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&receiver)
        .await;
    let toml = format!(
        r#"
[notifications]
base_url = "http://factory.test"
[notifications.channels.team]
kind = "slack"
url = "{0}/team"
[notifications.channels.ops]
kind = "webhook"
url = "{0}/ops"
[[notifications.rules]]
on = ["gate.waiting"]
templates = ["review-demo"]
channels = ["team", "ops"]
"#,
        receiver.uri()
    );
    let config = factory_notify::NotificationsConfig::from_toml(&toml, "factory.toml").unwrap();
    let notifications =
        factory_notify::Notifications::from_config(config, |_| None, "factory.toml").unwrap();
    let t = TestServer::start_notifying(notifications).await;
    let (run, _) = crate::api::start_review_demo(&t, "Notify me").await;
    let mut rows = Value::Null;
    for _ in 0..200 {
        let (s, b) = t
            .call(Method::GET, "/api/v1/notifications", "viewer", None)
            .await;
        assert_eq!(s, 200, "{b}");
        rows = b;
        let settled = rows["notifications"]
            .as_array()
            .is_some_and(|n| n.len() == 2 && n.iter().all(|r| r["status"] != "pending"));
        if settled {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(rows["configured"], true, "{rows}");
    let by_channel = |name: &str| {
        rows["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["channel"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} row: {rows}"))
    };
    assert_eq!(by_channel("team")["status"], "delivered", "{rows}");
    let ops = by_channel("ops");
    assert_eq!(ops["status"], "failed", "a 410 is final: {rows}");
    assert!(
        ops["last_error"]
            .as_str()
            .unwrap()
            .contains("hook disabled"),
        "{rows}"
    );
    assert_eq!(ops["run_id"], run.as_str());
    let id = ops["id"].as_str().unwrap().to_string();
    let (s, _) = t
        .call(
            Method::POST,
            &format!("/api/v1/notifications/{id}/retry"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 403, "a viewer may not send again");
    let (s, b) = t
        .call(
            Method::GET,
            "/api/v1/notifications?status=sent",
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 400, "{b}");

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "operator", "/notifications").await;
    let table = text_of(c, "#notifications").await;
    assert!(
        table.contains("Waiting for approval: draft in review-demo")
            && table.contains("delivered")
            && table.contains("hook disabled"),
        "{table}"
    );
    click(
        c,
        &format!(r#"tr[data-notification="{id}"] button[type=submit]"#),
    )
    .await;
    until(
        c,
        "the failed notification delivered",
        &format!(
            r#"const row = document.querySelector('tr[data-notification="{id}"]'); return !!row && row.querySelector('.status').textContent === 'delivered';"#
        ),
    )
    .await;
    let requests = receiver.received_requests().await.unwrap();
    let ops_tries = requests.iter().filter(|r| r.url.path() == "/ops").count();
    assert_eq!(ops_tries, 2, "refused once, delivered once");
    let slack: Value = serde_json::from_slice(
        &requests
            .iter()
            .find(|r| r.url.path() == "/team")
            .unwrap()
            .body,
    )
    .unwrap();
    assert!(
        slack["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains(&format!("<http://factory.test/runs/{run}/blocks/draft|")),
        "{slack}"
    );
    screenshot_at(c, "notifications", "main").await;
    b.client.clone().close().await.unwrap();
}

/// Media artifacts in the workbench: a block's PNG shows inline, its PDF is
/// a link, the next block's WAV plays in an audio player; each is served
/// with its media type and described by what its checks found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_show_and_audio_plays_on_the_block_page() {
    let t = TestServer::start().await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/media");
    for file in ["pipeline.json", "make_media.py"] {
        std::fs::copy(example.join(file), t.templates.join(file)).unwrap();
    }
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "media-example", "params": {"title": "Launch week"}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    t.wait_for(&run, "the episode", |d| {
        block_status(d, "episode") == "done"
    })
    .await;
    let response = t
        .http
        .get(t.url(&format!("/api/v1/runs/{run}/blocks/cards/artifacts/card")))
        .bearer_auth(&t.tokens["viewer"])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "image/png");
    assert!(response.bytes().await.unwrap().starts_with(b"\x89PNG"));
    let response = t
        .http
        .get(t.url(&format!("/api/v1/runs/{run}/blocks/cards/artifacts/brief")))
        .bearer_auth(&t.tokens["viewer"])
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["content-type"], "application/pdf");
    let (s, listed) = t
        .call(
            Method::GET,
            &format!("/api/v1/runs/{run}/blocks/cards/artifacts"),
            "viewer",
            None,
        )
        .await;
    assert_eq!(s, 200, "{listed}");
    assert_eq!(
        listed["artifacts"]["card"]["media"]["width"], 240,
        "{listed}"
    );
    assert_eq!(
        listed["artifacts"]["brief"]["media"]["pages"], 1,
        "{listed}"
    );

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "viewer", &format!("/runs/{run}/blocks/cards")).await;
    until(
        c,
        "the card to load",
        "const img = document.querySelector('#tab-outputs figure.media img'); return !!img && img.complete && img.naturalWidth === 240 && img.naturalHeight === 126;",
    )
    .await;
    let outputs = text_of(c, "#tab-outputs").await;
    assert!(
        outputs.contains("image/png, 240×126") && outputs.contains("Open the PDF"),
        "{outputs}"
    );
    accessible(c, "a block page with media").await;
    screenshot_at(c, "media-artifacts", "#tab-outputs").await;
    c.goto(&t.url(&format!("/runs/{run}/blocks/episode")))
        .await
        .unwrap();
    until(
        c,
        "the episode's metadata",
        "const a = document.querySelector('#tab-outputs figure.media audio'); return !!a && a.readyState >= 1 && Math.abs(a.duration - 2) < 0.1;",
    )
    .await;
    b.client.clone().close().await.unwrap();
}

/// `image` and `speech` blocks (examples/media-gen) against a local server
/// that speaks OpenAI's wire format: the drawn card shows on its block page
/// with the call that made it, and the spoken episode's player loads.
#[tokio::test]
async fn a_drawn_card_shows_and_a_spoken_episode_loads_on_their_block_pages() {
    use base64::Engine as _;
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let provider = MockServer::start().await;
    let script = "HOST: Welcome.\nGUEST: Anchor first, then stop talking.\nHOST: Thanks.";
    let chunk =
        json!({"choices": [{"index": 0, "delta": {"content": script}, "finish_reason": "stop"}]});
    Mock::given(method("POST"))
        .and(path("/v1/chat/completions"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "text/event-stream")
                .set_body_string(format!("data: {chunk}\n\ndata: [DONE]\n\n")),
        )
        .mount(&provider)
        .await;
    let png = factory_audit::media::samples::png_rgb(300, 200, [40, 70, 160]);
    Mock::given(method("POST"))
        .and(path("/v1/images/generations"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{"b64_json": base64::engine::general_purpose::STANDARD.encode(&png)}],
            "usage": {"input_tokens": 90, "output_tokens": 4160}
        })))
        .mount(&provider)
        .await;
    Mock::given(method("POST"))
        .and(path("/v1/audio/speech"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("content-type", "audio/wav")
                .set_body_bytes(factory_audit::media::samples::wav(800)),
        )
        .mount(&provider)
        .await;
    let base = format!("{}/v1", provider.uri());
    let settings = factory_runtime::llm::LlmSettings::from_lookup(|name| match name {
        "OPENAI_BASE_URL" => Some(base.clone()),
        "OPENAI_API_KEY" => Some("sk-local".into()),
        "FACTORY_DEFAULT_MODEL" => Some("openai:tiny".into()),
        _ => None,
    });
    let t = TestServer::start_with(Some(settings)).await;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/media-gen");
    std::fs::copy(
        example.join("pipeline.json"),
        t.templates.join("media-gen.json"),
    )
    .unwrap();
    for skill in ["social-card", "episode-script"] {
        let dir = t.templates.join("skills").join(skill);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(
            example.join("skills").join(skill).join("SKILL.md"),
            dir.join("SKILL.md"),
        )
        .unwrap();
    }
    let (s, b) = t
        .call(
            Method::POST,
            "/api/v1/runs",
            "operator",
            Some(json!({"template": "media-gen", "params": {}})),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    let run = b["run_id"].as_str().unwrap().to_string();
    let doc = t
        .wait_for(&run, "the episode", |d| {
            block_status(d, "episode") == "done" || d["status"] == "failed"
        })
        .await;
    assert_eq!(doc["status"], "done", "{doc}");

    let b = browser().await;
    let c = &b.client;
    login(c, &t, "viewer", &format!("/runs/{run}/blocks/card")).await;
    until(
        c,
        "the drawn card to load",
        "const img = document.querySelector('#tab-outputs figure.media img'); return !!img && img.complete && img.naturalWidth === 300 && img.naturalHeight === 200;",
    )
    .await;
    let outputs = text_of(c, "#tab-outputs").await;
    assert!(
        outputs.contains("Image model openai:gpt-image-1") && outputs.contains("1 image(s)"),
        "{outputs}"
    );
    accessible(c, "an image block's page").await;
    screenshot_at(c, "image-block", "#tab-outputs").await;
    c.goto(&t.url(&format!("/runs/{run}/blocks/episode")))
        .await
        .unwrap();
    until(
        c,
        "the spoken episode's metadata",
        "const a = document.querySelector('#tab-outputs figure.media audio'); return !!a && a.readyState >= 1 && a.duration > 1;",
    )
    .await;
    let outputs = text_of(c, "#tab-outputs").await;
    assert!(
        outputs.contains("Speech model openai:gpt-4o-mini-tts")
            && outputs.contains("characters spoken"),
        "{outputs}"
    );
    b.client.clone().close().await.unwrap();
}

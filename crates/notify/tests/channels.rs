//! The channels against real peers on loopback: a real SMTP server
//! (aiosmtpd, `scripts/smtp-sink.py`) requiring STARTTLS and a login, and
//! HTTP receivers that check the webhook signature.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use factory_core::bus::BusEvent;
use factory_core::notify::{Context, Message, Occasion, compose};
use factory_notify::signature::{self, HookSecret};
use factory_notify::{Notifications, NotificationsConfig};
use serde_json::{Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

struct Sink {
    child: Child,
    port: u16,
    ca: Option<String>,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    fn start(args: &[&str]) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("mail.jsonl");
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/smtp-sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--out")
            .arg(&out)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 with aiosmtpd (pip install aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!("smtp-sink did not start ({e}): {line:?}; is aiosmtpd installed (pip install aiosmtpd)?")
        });
        Sink {
            child,
            port: ready["port"].as_u64().unwrap() as u16,
            ca: ready["ca"].as_str().map(str::to_string),
            out,
            _dir: dir,
        }
    }

    fn messages(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn gate_message() -> Message {
    let event = BusEvent {
        name: "gate.waiting".into(),
        template_id: "clone-factory".into(),
        run_id: Some("0193abcd-0000-7000-8000-000000000001".into()),
        block: Some("extraction-review".into()),
        record_key: None,
        payload: json!({"template": "clone-factory", "phase": "after"})
            .as_object()
            .cloned()
            .unwrap(),
    };
    compose(
        &event,
        Occasion::GateWaiting,
        &Context {
            base_url: Some("http://factory.test".into()),
            may_approve: Some("anyone with the reviewer, operator or admin role".into()),
            ..Context::default()
        },
    )
}

fn configured(toml: &str, env: &[(&str, &str)]) -> Result<Notifications, String> {
    let config = NotificationsConfig::from_toml(toml, "factory.toml").map_err(|e| e.0)?;
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Notifications::from_config(
        config,
        |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
        "factory.toml",
    )
    .map_err(|e| e.0)
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn email_goes_through_starttls_with_a_login() {
    let sink = Sink::start(&["--starttls", "--user", "factory", "--password", "s3cret"]);
    let toml = format!(
        r#"
[providers.x]
kind = "openai"

[notifications.channels.mail]
kind = "email"
host = "127.0.0.1"
port = {}
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
from = "Process Factory <factory@example.test>"
to = ["ana@example.test", "Ben <ben@example.test>"]
ca_file = "{}"
timeout_secs = 5

[[notifications.rules]]
on = ["gate.waiting"]
channels = ["mail"]
"#,
        sink.port,
        sink.ca.as_deref().unwrap()
    );
    let n = configured(
        &toml,
        &[("SMTP_USER", "factory"), ("SMTP_PASSWORD", "s3cret")],
    )
    .unwrap();
    n.send("mail", "ntf-7-mail", &gate_message(), 1_700_000_000)
        .await
        .unwrap();
    let got = sink.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    let mail = &got[0];
    assert_eq!(mail["tls"], true, "STARTTLS was in force");
    assert_eq!(mail["authenticated"], true, "the login was used");
    assert_eq!(mail["from"], "factory@example.test");
    assert_eq!(mail["to"], json!(["ana@example.test", "ben@example.test"]));
    assert_eq!(
        mail["subject"],
        "Waiting for approval: extraction-review in clone-factory (run 0193abcd)"
    );
    assert_eq!(mail["message_id"], "<ntf-7-mail@process-factory>");
    let body = mail["body"].as_str().unwrap();
    assert!(
        body.contains(
            "Open it: http://factory.test/runs/0193abcd-0000-7000-8000-000000000001/blocks/extraction-review"
        ) && body.contains("Who may approve: anyone with the reviewer"),
        "{body}"
    );

    // A wrong password is the server's refusal: said, and nothing delivered.
    let wrong = configured(
        &toml,
        &[("SMTP_USER", "factory"), ("SMTP_PASSWORD", "nope")],
    )
    .unwrap();
    let error = wrong
        .send("mail", "ntf-8-mail", &gate_message(), 1_700_000_000)
        .await
        .unwrap_err();
    assert!(error.message.starts_with("SMTP:"), "{error}");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test]
async fn a_refused_email_is_final_and_an_unreachable_server_is_retried() {
    let sink = Sink::start(&["--refuse"]);
    let toml = |port: u16| {
        format!(
            r#"
[notifications.channels.mail]
kind = "email"
host = "127.0.0.1"
port = {port}
tls = "none"
from = "factory@example.test"
to = ["ana@example.test"]
timeout_secs = 5
"#
        )
    };
    let n = configured(&toml(sink.port), &[]).unwrap();
    let refused = n
        .send("mail", "ntf-1-mail", &gate_message(), 0)
        .await
        .unwrap_err();
    assert!(!refused.retry, "a 554 is permanent: {refused}");
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let n = configured(&toml(closed), &[]).unwrap();
    let unreachable = n
        .send("mail", "ntf-2-mail", &gate_message(), 0)
        .await
        .unwrap_err();
    assert!(
        unreachable.retry,
        "nobody listening is worth a retry: {unreachable}"
    );
}

#[tokio::test]
async fn webhooks_are_signed_like_incoming_ones_and_slack_gets_its_own_body() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&server)
        .await;
    let toml = format!(
        r#"
[notifications.channels.hook]
kind = "webhook"
url = "{0}/hook"
secret_env = "HOOK_SECRET"

[notifications.channels.team]
kind = "slack"
url_env = "SLACK_URL"
"#,
        server.uri()
    );
    let slack_url = format!("{}/services/T000/B000/XXXX", server.uri());
    let n = configured(&toml, &[("HOOK_SECRET", SECRET), ("SLACK_URL", &slack_url)]).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    n.send("hook", "ntf-3-hook", &gate_message(), now)
        .await
        .unwrap();
    n.send("team", "ntf-3-team", &gate_message(), now)
        .await
        .unwrap();
    let requests = server.received_requests().await.unwrap();
    assert_eq!(requests.len(), 2);
    let hook = &requests[0];
    let header = |name: &str| hook.headers.get(name).map(|v| v.to_str().unwrap());
    assert_eq!(header("webhook-id"), Some("ntf-3-hook"));
    signature::verify(
        &HookSecret::parse(SECRET).unwrap(),
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
        &hook.body,
        now,
    )
    .expect("the delivery verifies with the channel's secret");
    let body: Value = serde_json::from_slice(&hook.body).unwrap();
    assert_eq!(body["occasion"], "gate.waiting");
    assert_eq!(body["id"], "ntf-3-hook");
    assert_eq!(body["fields"]["phase"], "after");
    let slack = &requests[1];
    assert_eq!(slack.url.path(), "/services/T000/B000/XXXX");
    assert!(
        slack.headers.get("webhook-signature").is_none(),
        "no secret, no signature"
    );
    let body: Value = serde_json::from_slice(&slack.body).unwrap();
    assert!(
        body["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .starts_with("*Waiting for approval: extraction-review")
    );
}

#[tokio::test]
async fn server_errors_are_retried_and_refusals_are_not() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::path("/busy"))
        .respond_with(ResponseTemplate::new(503))
        .mount(&server)
        .await;
    Mock::given(wiremock::matchers::path("/gone"))
        .respond_with(ResponseTemplate::new(410).set_body_string("hook removed"))
        .mount(&server)
        .await;
    let toml = format!(
        "[notifications.channels.busy]\nkind = \"webhook\"\nurl = \"{0}/busy\"\n[notifications.channels.gone]\nkind = \"webhook\"\nurl = \"{0}/gone\"\n",
        server.uri()
    );
    let n = configured(&toml, &[]).unwrap();
    let busy = n.send("busy", "a", &gate_message(), 0).await.unwrap_err();
    assert!(busy.retry, "{busy}");
    let gone = n.send("gone", "b", &gate_message(), 0).await.unwrap_err();
    assert!(!gone.retry, "{gone}");
    assert!(
        gone.message.contains("410") && gone.message.contains("hook removed"),
        "{gone}"
    );
    assert!(
        !gone.message.contains("/gone"),
        "the URL's path is not recorded: {gone}"
    );
    let missing = n
        .send("nowhere", "c", &gate_message(), 0)
        .await
        .unwrap_err();
    assert!(!missing.retry && missing.message.contains("no longer configured"));
}

/// A Slack webhook's path is its secret: a refused connection's error —
/// stored, listed to viewers, logged — names the host only.
#[tokio::test]
async fn a_refused_connection_does_not_record_the_secret_path() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/services/T0/B0/s3cr3tT0k3n?key=alsoSecret");
    let n = configured(
        "[notifications.channels.team]\nkind = \"slack\"\nurl_env = \"SLACK_URL\"\ntimeout_secs = 5\n",
        &[("SLACK_URL", &url)],
    )
    .unwrap();
    let error = n
        .send("team", "ntf-1-team", &gate_message(), 0)
        .await
        .unwrap_err();
    assert!(error.retry, "{error}");
    assert!(
        error.message.contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
    assert!(
        !error.message.contains("s3cr3t") && !error.message.contains("alsoSecret"),
        "{error}"
    );
}

#[test]
fn configuration_mistakes_say_where_and_how_to_fix_them() {
    let error = |toml: &str, env: &[(&str, &str)]| configured(toml, env).unwrap_err();
    let hook = "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"https://h.test/x\"\n";
    let e = error(
        &format!(
            "{hook}[[notifications.rules]]\non = [\"gate.waiting\"]\nchannels = [\"hook\", \"mail\"]\n"
        ),
        &[],
    );
    assert!(
        e.contains("[notifications.rules][0]")
            && e.contains("`mail`")
            && e.contains("the channels are: hook"),
        "{e}"
    );
    let e = error(
        &format!("{hook}[[notifications.rules]]\non = [\"gate.opened\"]\nchannels = [\"hook\"]\n"),
        &[],
    );
    assert!(
        e.contains("factory.toml") && e.contains("not an occasion"),
        "{e}"
    );
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl_env = \"HOOK_URL\"\n",
        &[],
    );
    assert!(
        e.contains("[notifications.channels.hook]")
            && e.contains("`HOOK_URL`")
            && e.contains("not set"),
        "{e}"
    );
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"ftp://h.test\"\n",
        &[],
    );
    assert!(e.contains("https://"), "{e}");
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"https://h.test\"\nsecret = \"whsec_x\"\n",
        &[],
    );
    assert!(e.contains("unknown field `secret`"), "{e}");
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"https://h.test\"\nsecret_env = \"S\"\n",
        &[("S", "not-a-secret")],
    );
    assert!(e.contains("`S`") && e.contains("whsec_"), "{e}");
    let mail = "[notifications.channels.mail]\nkind = \"email\"\nhost = \"smtp.test\"\nfrom = \"f@x.test\"\n";
    let e = error(&format!("{mail}to = []\n"), &[]);
    assert!(
        e.contains("[notifications.channels.mail] to is empty"),
        "{e}"
    );
    let e = error(&format!("{mail}to = [\"not an address\"]\n"), &[]);
    assert!(e.contains("`not an address` is not an address"), "{e}");
    let e = error(
        &format!("{mail}to = [\"a@x.test\"]\nusername_env = \"U\"\n"),
        &[("U", "u")],
    );
    assert!(e.contains("set both"), "{e}");
    let e = error(
        "[notifications.channels.hook]\nkind = \"webhook\"\nurl = \"https://h.test\"\ntimeout_secs = 300\n",
        &[],
    );
    assert!(e.contains("timeout_secs = 300: use 1 to 60"), "{e}");
    let e = error(
        "[notifications.channels.\"ops team\"]\nkind = \"webhook\"\nurl = \"https://h.test\"\n",
        &[],
    );
    assert!(e.contains("letters, digits"), "{e}");
    let e = error("[notifications.channels.pager]\nkind = \"pager\"\n", &[]);
    assert!(e.contains("unknown variant `pager`"), "{e}");
    // Other tables of the file are not this crate's business.
    assert!(
        configured(
            "default_model = \"fast\"\n[providers.v]\nkind = \"openai\"\n",
            &[]
        )
        .unwrap()
        .channel_names()
        .is_empty()
    );
}

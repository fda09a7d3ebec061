//! Notification channels: email over SMTP (lettre) and outgoing webhooks
//! (a generic JSON body, or Slack's incoming-webhook body), configured in
//! `factory.toml` under `[notifications]`, with the rules that say which
//! occasions go where ([`factory_core::notify`]). Secrets (SMTP password,
//! webhook URLs that are secrets, signing keys) are never in the file, only
//! the names of the environment variables that hold them.
//!
//! Webhook deliveries are signed as incoming webhooks are checked
//! ([`signature`], the Standard Webhooks scheme): `webhook-id` is the
//! notification's id, so a receiver can drop a second delivery of one
//! notification (after a crash between sending and recording it).

pub mod signature;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use factory_core::notify::{Message, Rule};
use lettre::message::{Mailbox, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;
use signature::HookSecret;

/// `[notifications]` in `factory.toml`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationsConfig {
    /// The server's address as people reach it, for links in messages.
    pub base_url: Option<String>,
    #[serde(default)]
    pub channels: BTreeMap<String, ChannelConfig>,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Tries per notification before it is marked failed (default 10).
    pub max_attempts: Option<u32>,
    /// The first wait after a failed try, doubling after each (default 5000).
    pub retry_initial_ms: Option<u64>,
}

/// `[notifications.channels.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChannelConfig {
    Email {
        host: String,
        /// Default: 465 with `tls = "tls"`, 587 otherwise.
        port: Option<u16>,
        /// `starttls` (the default), `tls` (TLS from the start), or `none`
        /// (plain text: a relay on the same host only).
        tls: Option<SmtpTls>,
        /// Environment variables holding the SMTP login (both or neither).
        username_env: Option<String>,
        password_env: Option<String>,
        from: String,
        to: Vec<String>,
        /// A PEM file of extra root certificates (an internal relay's CA).
        ca_file: Option<PathBuf>,
        timeout_secs: Option<u64>,
    },
    Webhook {
        url: Option<String>,
        /// The variable holding the URL, when the URL is itself a secret.
        url_env: Option<String>,
        /// The variable holding a `whsec_…` signing secret.
        secret_env: Option<String>,
        timeout_secs: Option<u64>,
    },
    Slack {
        url: Option<String>,
        url_env: Option<String>,
        secret_env: Option<String>,
        timeout_secs: Option<u64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    Starttls,
    Tls,
    None,
}

/// A configuration mistake, naming where it is and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Why a try to send failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    pub message: String,
    /// False when trying again cannot help (a permanent SMTP refusal, a
    /// 4xx answer other than 408/429).
    pub retry: bool,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a try may take: well inside the notifier's two-minute claim.
pub const MAX_TIMEOUT_SECS: u64 = 60;

/// The configured channels and rules, ready to send.
pub struct Notifications {
    pub base_url: Option<String>,
    pub rules: Vec<Rule>,
    pub max_attempts: u32,
    pub retry_initial_ms: u64,
    channels: BTreeMap<String, Channel>,
}

impl std::fmt::Debug for Notifications {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifications")
            .field("channels", &self.channels.keys().collect::<Vec<_>>())
            .field("rules", &self.rules.len())
            .finish()
    }
}

enum Channel {
    Email {
        /// Boxed: the transport is far larger than a webhook's fields.
        transport: Box<AsyncSmtpTransport<Tokio1Executor>>,
        from: Mailbox,
        to: Vec<Mailbox>,
        /// The whole conversation's limit: lettre's own timeout is per
        /// read, and a server that stalls between answers would hold the
        /// sender for as long as it likes.
        timeout: Duration,
    },
    Webhook {
        url: String,
        secret: Option<HookSecret>,
        slack: bool,
        client: reqwest::Client,
    },
}

impl NotificationsConfig {
    /// Parses the `[notifications]` table of a `factory.toml` (other
    /// tables are not this crate's); the error names the file.
    pub fn from_toml(text: &str, file: &str) -> Result<NotificationsConfig, ConfigError> {
        #[derive(Deserialize)]
        struct File {
            #[serde(default)]
            notifications: NotificationsConfig,
        }
        #[derive(Deserialize)]
        struct Whole {
            #[serde(flatten)]
            file: File,
            #[serde(flatten)]
            _rest: toml::Table,
        }
        toml::from_str::<Whole>(text)
            .map(|w| w.file.notifications)
            .map_err(|e| ConfigError(format!("{file}: {e}")))
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.rules.is_empty()
    }
}

impl Notifications {
    /// Checks `config` and resolves its secrets through `lookup` (the
    /// environment): every rule names known channels and occasions, every
    /// named variable is set, addresses and URLs parse.
    pub fn from_config(
        config: NotificationsConfig,
        lookup: impl Fn(&str) -> Option<String>,
        file: &str,
    ) -> Result<Notifications, ConfigError> {
        let at = |what: &str| format!("{file}: [notifications{what}]");
        let env = |name: &str, what: &str| {
            lookup(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                ConfigError(format!(
                    "{} names the environment variable `{name}`, which is not set; set it in the environment of the process that sends notifications",
                    at(what)
                ))
            })
        };
        let mut channels = BTreeMap::new();
        for (name, channel) in config.channels {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(ConfigError(format!(
                    "{file}: [notifications.channels.{name:?}]: a channel's name is letters, digits, `-` and `_` (it is part of each notification's id)"
                )));
            }
            let here = format!(".channels.{name}]");
            let here = &here[..here.len() - 1];
            let timeout = |secs: Option<u64>| match secs {
                None => Ok(DEFAULT_TIMEOUT),
                Some(secs @ 1..=MAX_TIMEOUT_SECS) => Ok(Duration::from_secs(secs)),
                Some(secs) => Err(ConfigError(format!(
                    "{} timeout_secs = {secs}: use 1 to {MAX_TIMEOUT_SECS} (a try that takes longer outlives its claim and could be sent twice)",
                    at(here)
                ))),
            };
            let slack = matches!(channel, ChannelConfig::Slack { .. });
            let built = match channel {
                ChannelConfig::Email {
                    host,
                    port,
                    tls,
                    username_env,
                    password_env,
                    from,
                    to,
                    ca_file,
                    timeout_secs,
                } => {
                    let tls = tls.unwrap_or(SmtpTls::Starttls);
                    let port = port.unwrap_or(if tls == SmtpTls::Tls { 465 } else { 587 });
                    let from: Mailbox = from.parse().map_err(|e| {
                        ConfigError(format!("{} from `{from}` is not an address: {e}", at(here)))
                    })?;
                    if to.is_empty() {
                        return Err(ConfigError(format!(
                            "{} to is empty: list at least one address",
                            at(here)
                        )));
                    }
                    let to = to
                        .iter()
                        .map(|a| {
                            a.parse::<Mailbox>().map_err(|e| {
                                ConfigError(format!("{} to `{a}` is not an address: {e}", at(here)))
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let timeout = timeout(timeout_secs)?;
                    let mut builder =
                        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
                            .port(port)
                            .timeout(Some(timeout));
                    if tls != SmtpTls::None {
                        let mut params = TlsParameters::builder(host.clone());
                        if let Some(path) = &ca_file {
                            let pem = std::fs::read(path).map_err(|e| {
                                ConfigError(format!(
                                    "{} ca_file `{}` cannot be read: {e}",
                                    at(here),
                                    path.display()
                                ))
                            })?;
                            let cert = Certificate::from_pem(&pem).map_err(|e| {
                                ConfigError(format!(
                                    "{} ca_file `{}` is not a PEM certificate: {e}",
                                    at(here),
                                    path.display()
                                ))
                            })?;
                            params = params.add_root_certificate(cert);
                        }
                        let params = params
                            .build_rustls()
                            .map_err(|e| ConfigError(format!("{} TLS settings: {e}", at(here))))?;
                        builder = builder.tls(match tls {
                            SmtpTls::Tls => Tls::Wrapper(params),
                            _ => Tls::Required(params),
                        });
                    }
                    match (&username_env, &password_env) {
                        (Some(user), Some(password)) => {
                            builder = builder.credentials(Credentials::new(
                                env(user, here)?,
                                env(password, here)?,
                            ));
                        }
                        (None, None) => {}
                        _ => {
                            return Err(ConfigError(format!(
                                "{} sets only one of username_env and password_env: set both, or neither for a relay without login",
                                at(here)
                            )));
                        }
                    }
                    Channel::Email {
                        transport: Box::new(builder.build()),
                        from,
                        to,
                        timeout,
                    }
                }
                ChannelConfig::Webhook {
                    url,
                    url_env,
                    secret_env,
                    timeout_secs,
                }
                | ChannelConfig::Slack {
                    url,
                    url_env,
                    secret_env,
                    timeout_secs,
                } => {
                    let url = match (url, url_env) {
                        (Some(url), None) => url,
                        (None, Some(var)) => env(&var, here)?,
                        _ => {
                            return Err(ConfigError(format!(
                                "{} needs exactly one of url and url_env",
                                at(here)
                            )));
                        }
                    };
                    if !(url.starts_with("https://") || url.starts_with("http://")) {
                        return Err(ConfigError(format!(
                            "{} url must start with https:// or http://",
                            at(here)
                        )));
                    }
                    let secret = secret_env
                        .map(|var| {
                            HookSecret::parse(&env(&var, here)?).map_err(|e| {
                                ConfigError(format!("{} secret in `{var}`: {e}", at(here)))
                            })
                        })
                        .transpose()?;
                    let client = reqwest::Client::builder()
                        .timeout(timeout(timeout_secs)?)
                        .redirect(reqwest::redirect::Policy::none())
                        .build()
                        .map_err(|e| ConfigError(format!("{} HTTP client: {e}", at(here))))?;
                    Channel::Webhook {
                        url,
                        secret,
                        slack,
                        client,
                    }
                }
            };
            channels.insert(name, built);
        }
        for (n, rule) in config.rules.iter().enumerate() {
            if rule.on.is_empty() {
                return Err(ConfigError(format!(
                    "{} on is empty: name the occasions the rule is for",
                    at(&format!(".rules][{n}"))
                )));
            }
            if rule.channels.is_empty() {
                return Err(ConfigError(format!(
                    "{} channels is empty: name where the rule sends",
                    at(&format!(".rules][{n}"))
                )));
            }
            for name in &rule.channels {
                if !channels.contains_key(name) {
                    return Err(ConfigError(format!(
                        "{} channels names `{name}`, which is not a channel; the channels are: {}",
                        at(&format!(".rules][{n}")),
                        if channels.is_empty() {
                            "none (add [notifications.channels.NAME])".to_string()
                        } else {
                            channels.keys().cloned().collect::<Vec<_>>().join(", ")
                        }
                    )));
                }
            }
        }
        Ok(Notifications {
            base_url: config.base_url,
            rules: config.rules,
            max_attempts: config.max_attempts.unwrap_or(10).max(1),
            retry_initial_ms: config.retry_initial_ms.unwrap_or(5_000).max(1),
            channels,
        })
    }

    pub fn channel_names(&self) -> Vec<String> {
        self.channels.keys().cloned().collect()
    }

    /// Sends notification `id` (`message`) through `channel`; `now` is the
    /// time in seconds (the webhook signature's timestamp).
    pub async fn send(
        &self,
        channel: &str,
        id: &str,
        message: &Message,
        now_secs: i64,
    ) -> Result<(), SendError> {
        let Some(target) = self.channels.get(channel) else {
            return Err(SendError {
                message: format!(
                    "channel `{channel}` is no longer configured; add it back to [notifications.channels] or let the notification fail"
                ),
                retry: false,
            });
        };
        match target {
            Channel::Email {
                transport,
                from,
                to,
                timeout,
            } => {
                let mut builder = lettre::Message::builder()
                    .from(from.clone())
                    .subject(message.subject.clone())
                    .message_id(Some(format!("<{id}@process-factory>")))
                    .header(ContentType::TEXT_PLAIN);
                for address in to {
                    builder = builder.to(address.clone());
                }
                let email = builder.body(message.text.clone()).map_err(|e| SendError {
                    message: format!("cannot build the email: {e}"),
                    retry: false,
                })?;
                match tokio::time::timeout(*timeout, transport.send(email)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(SendError {
                        message: format!("SMTP: {e}"),
                        retry: !e.is_permanent(),
                    }),
                    Err(_) => Err(SendError {
                        message: format!(
                            "SMTP: the server did not finish within {} s (timeout_secs)",
                            timeout.as_secs()
                        ),
                        retry: true,
                    }),
                }
            }
            Channel::Webhook {
                url,
                secret,
                slack,
                client,
            } => {
                let body = if *slack {
                    message.slack_body()
                } else {
                    message.webhook_body(id, now_secs.saturating_mul(1000))
                };
                let body = serde_json::to_vec(&body).unwrap_or_default();
                let mut request = client
                    .post(url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", now_secs.to_string());
                if let Some(secret) = secret {
                    request = request.header("webhook-signature", secret.sign(id, now_secs, &body));
                }
                let response = request.body(body).send().await.map_err(|e| {
                    // reqwest's text names the whole URL, and a Slack
                    // webhook's path is its secret: the record gets the
                    // host and the causes only.
                    let retry = !e.is_builder();
                    let e = e.without_url();
                    let mut message = format!("POST {}: {e}", redact(url));
                    let mut source = std::error::Error::source(&e);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    SendError {
                        message: message.replace(url, &redact(url)),
                        retry,
                    }
                })?;
                let status = response.status();
                if status.is_success() {
                    return Ok(());
                }
                let text = bounded_text(response, 300).await;
                Err(SendError {
                    message: format!("POST {} answered {status}: {text}", redact(url)),
                    retry: status.is_server_error()
                        || status == reqwest::StatusCode::REQUEST_TIMEOUT
                        || status == reqwest::StatusCode::TOO_MANY_REQUESTS,
                })
            }
        }
    }
}

/// Up to `limit` characters of a refusal's body, reading at most 4 KiB of
/// it (a receiver may answer with a page of any size).
async fn bounded_text(mut response: reqwest::Response, limit: usize) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < 4096 {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes)
        .chars()
        .take(limit)
        .collect()
}

/// A URL as it may appear in a record: scheme and host only (a Slack
/// webhook's path is its secret).
fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}/…",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "the configured URL".to_string(),
    }
}

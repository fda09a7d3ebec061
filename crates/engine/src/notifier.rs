//! The notifier (README "Notifications"): reads the event feed and turns
//! each event a rule asks for into one outbox row per channel, then sends
//! the rows that are due and records how each try ended.
//!
//! Nothing is lost or made twice by a crash: the feed's events are written
//! with the changes they tell of; a read of the feed stores its rows and
//! moves the notifier's cursor in one transaction, under ids made of the
//! event's number and the channel; a row stays pending until a channel
//! took it (a sender that dies mid-try leaves a claim that runs out, and
//! the row is sent again — receivers can tell by its id, which is the
//! webhook's `webhook-id` and the email's `Message-ID`).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use factory_core::bus::BusEvent;
use factory_core::notify::{self, Context, Message, Occasion};
use factory_core::run::BlockStatus;
use factory_notify::Notifications;
use factory_store::{DeliveryOutcome, FeedEvent, NewNotification, Notification};
use tokio::sync::watch;

use crate::{Engine, Result, now_ms};

/// Feed events read at a time, per occasion.
const BATCH: u32 = 200;
/// Notifications claimed at a time.
const SEND_BATCH: u32 = 16;
/// How long a claim holds: longer than a try can take (30 s timeouts).
const CLAIM_MS: i64 = 120_000;
const POLL: Duration = Duration::from_millis(300);
/// Events older than this when read are passed over, not sent: after a
/// long stop (or notifications switched back on) people are not flooded
/// with gates long since approved.
const MAX_EVENT_AGE_MS: i64 = 24 * 3600 * 1000;

impl Engine {
    /// Makes and sends notifications until `stopped` turns true; returns at
    /// once when none are configured.
    pub async fn run_notifier(self: Arc<Self>, mut stopped: watch::Receiver<bool>) {
        let Some(notifications) = self.config.notifications.clone() else {
            return;
        };
        let holder = format!("{}/notifier", self.owner.id());
        let channels = notifications.channel_names();
        let mut backoff = POLL;
        while !*stopped.borrow() {
            // Making rows and sending them fail apart: a feed that cannot
            // be read does not hold up what is queued already.
            let made = self.make_notifications(&notifications).await;
            let sent = self.send_due(&notifications, &holder, &channels).await;
            let busy = match (made, sent) {
                (Ok(made), Ok(sent)) => Ok(made || sent),
                (Err(error), _) | (_, Err(error)) => Err(error),
            };
            let pause = match busy {
                Ok(true) => {
                    backoff = POLL;
                    Duration::ZERO
                }
                Ok(false) => {
                    backoff = POLL;
                    POLL
                }
                Err(error) => {
                    tracing::warn!(%error, ?backoff, "notifier: cannot read or send; trying again");
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    backoff
                }
            };
            if pause.is_zero() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
        }
    }

    /// One read of the feed for each occasion — those no rule names too,
    /// so a rule added later starts from then, not from when the last one
    /// was removed; true when a batch was full (there may be more).
    async fn make_notifications(&self, notifications: &Notifications) -> Result<bool> {
        let names: BTreeSet<&str> = Occasion::ALL.iter().map(|o| o.feed_name()).collect();
        let mut more = false;
        for name in names {
            let consumer = format!("notify/{name}");
            let now = now_ms();
            let at = self.store.feed_cursor(&consumer, now).await?;
            let events = self.store.feed_after(name, at, BATCH).await?;
            let Some(last) = events.last().map(FeedEvent::position) else {
                continue;
            };
            more |= events.len() as u32 == BATCH;
            let mut rows = Vec::new();
            for event in &events {
                if event.at < now - MAX_EVENT_AGE_MS {
                    tracing::info!(
                        seq = event.seq,
                        event = name,
                        "notifier: an event more than a day old is not sent"
                    );
                    continue;
                }
                rows.extend(self.notifications_of(notifications, event).await?);
            }
            let added = self
                .store
                .enqueue_notifications(&rows, &consumer, last, now_ms())
                .await?;
            if added > 0 {
                tracing::info!(added, event = name, "notifications queued");
            }
        }
        Ok(more)
    }

    /// The outbox rows of one event: one per channel its rules name.
    async fn notifications_of(
        &self,
        notifications: &Notifications,
        event: &FeedEvent,
    ) -> Result<Vec<NewNotification>> {
        let Some(occasion) = Occasion::of(&event.event) else {
            return Ok(Vec::new());
        };
        let channels =
            notify::channels_for(&notifications.rules, occasion, &event.event.template_id);
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        let mut context = self.context_of(&event.event, occasion).await?;
        context.base_url = notifications.base_url.clone();
        let message = notify::compose(&event.event, occasion, &context);
        let text = serde_json::to_string(&message).unwrap_or_default();
        Ok(channels
            .into_iter()
            .map(|channel| NewNotification {
                id: notify::delivery_id(event.seq, &channel),
                event_seq: event.seq,
                channel,
                occasion,
                template_id: event.event.template_id.clone(),
                run_id: event.event.run_id.clone(),
                block: event.event.block.clone(),
                subject: message.subject.clone(),
                message: text.clone(),
                created_at: now_ms(),
            })
            .collect())
    }

    /// What the run says beside the event: the block's name, who may
    /// approve, the failed blocks. A run that is gone still gets its
    /// notification, with the event's facts only; a store that cannot be
    /// read now is an error (the batch is read again).
    async fn context_of(&self, event: &BusEvent, occasion: Occasion) -> Result<Context> {
        let mut context = Context::default();
        let Some(run_id) = event.run_id.as_deref() else {
            return Ok(context);
        };
        let handle = match self.open(run_id).await {
            Ok(handle) => handle,
            Err(crate::EngineError::Store(factory_store::StoreError::RunNotFound(_))) => {
                tracing::warn!(%run_id, "notifier: the run is gone; the message says what the event says");
                return Ok(context);
            }
            Err(error) => return Err(error),
        };
        let pipeline = handle.pipeline();
        let block = event.block.as_deref().and_then(|b| pipeline.block(b));
        context.block_name = block.map(|b| b.name.clone());
        if occasion == Occasion::GateWaiting {
            let anyone = "anyone with the reviewer, operator or admin role";
            context.may_approve = Some(match block {
                Some(spec) if spec.execution.separate_reviewer => {
                    // Who set this pass in motion, as the block page says it.
                    let records = self.store.events(run_id, 0).await?;
                    let ran = factory_core::run::ran_by(&records, &spec.id);
                    if ran.is_empty() {
                        format!(
                            "{anyone}, except whoever started this block's pass (the gate asks for a separate reviewer)"
                        )
                    } else {
                        format!(
                            "{anyone}, except {} (who set this pass in motion: the gate asks for a separate reviewer)",
                            ran.into_iter().collect::<Vec<_>>().join(", ")
                        )
                    }
                }
                _ => anyone.to_string(),
            });
        }
        if occasion == Occasion::RunFailed {
            context.failed_blocks = handle
                .doc()
                .blocks
                .iter()
                .filter(|(_, b)| b.status == BlockStatus::Failed)
                .map(|(id, b)| (id.clone(), b.error.clone().unwrap_or_default()))
                .collect();
        }
        Ok(context)
    }

    /// Claims the due notifications of `channels` and tries each once;
    /// true when any was.
    async fn send_due(
        &self,
        notifications: &Notifications,
        holder: &str,
        channels: &[String],
    ) -> Result<bool> {
        let now = now_ms();
        let claimed = self
            .store
            .claim_notifications(holder, channels, now, now + CLAIM_MS, SEND_BATCH)
            .await?;
        let any = !claimed.is_empty();
        let tries = claimed
            .into_iter()
            .map(|row| self.try_once(notifications, holder, row));
        for result in futures_util::future::join_all(tries).await {
            result?;
        }
        Ok(any)
    }

    async fn try_once(
        &self,
        notifications: &Notifications,
        holder: &str,
        row: Notification,
    ) -> Result<()> {
        let sent = match serde_json::from_str::<Message>(&row.message) {
            Ok(message) => {
                notifications
                    .send(&row.channel, &row.id, &message, now_ms() / 1000)
                    .await
            }
            Err(error) => Err(factory_notify::SendError {
                message: format!("the stored message cannot be read: {error}"),
                retry: false,
            }),
        };
        let tries = row.attempts + 1;
        let outcome = match sent {
            Ok(()) => DeliveryOutcome::Delivered { at: now_ms() },
            Err(error) if !error.retry || tries >= notifications.max_attempts => {
                tracing::warn!(id = %row.id, channel = %row.channel, %error, tries, "notification failed for good");
                DeliveryOutcome::Failed {
                    error: if error.retry {
                        format!("{} (gave up after {tries} tries)", error.message)
                    } else {
                        error.message
                    },
                }
            }
            Err(error) => {
                let wait = notify::retry_delay_ms(tries, notifications.retry_initial_ms);
                tracing::info!(id = %row.id, channel = %row.channel, %error, tries, wait_ms = wait, "notification not delivered; will try again");
                DeliveryOutcome::Retry {
                    next_at: now_ms() + wait as i64,
                    error: error.message,
                }
            }
        };
        if !self
            .store
            .finish_notification(&row.id, holder, &outcome)
            .await?
        {
            tracing::warn!(id = %row.id, "notifier: the claim ran out before the try ended; another sender has it");
        }
        Ok(())
    }

    /// Notifications, newest first (the workbench, `factory notifications`).
    pub async fn notifications(
        &self,
        filter: &factory_store::NotificationFilter,
    ) -> Result<Vec<Notification>> {
        Ok(self.store.notifications(filter).await?)
    }

    /// Makes a failed notification (or a pending one no sender is trying)
    /// due now.
    pub async fn retry_notification(&self, id: &str) -> Result<()> {
        if self.store.retry_notification(id, now_ms()).await? {
            Ok(())
        } else {
            Err(crate::EngineError::NotFound(format!(
                "a notification `{id}` to send again (none by that id has failed or waits: it may be delivered already, or a try is in flight)"
            )))
        }
    }
}

//! Limits every worker of a store holds together, through the store: the
//! concurrency of each LLM provider. A worker takes a slot (a row of
//! `permits`) before it calls the provider and deletes it after; while the
//! call lasts it renews the slot, so a worker that crashes frees its slots
//! when their time runs out ([`HOLD`]) instead of holding them for ever.
//!
//! Rate limits (requests per minute) use the same table: a request takes a
//! slot of the key's `… requests` limit for the window and never gives it
//! back, so the slots held at any moment are the requests that started in
//! the last window (a sliding window kept by the whole fleet).
//!
//! Token limits (tokens per minute) are spends in `budget_spends`: a
//! request counts its estimated tokens (prompt plus `max_tokens`) for the
//! window once the live spends leave room, and the amount is corrected to
//! the reply's usage when it arrives.
//!
//! Waiting is polling with backoff (20 ms doubling to 500 ms): LLM calls
//! last seconds, so a freed slot waits at most a fraction of one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use factory_core::run::Millis;
use factory_llm::{SharedLimit, SharedPermit};
use factory_store::Store;

use crate::now_ms;

/// How long a slot is held without renewal.
const HOLD: Duration = Duration::from_secs(60);

/// A [`SharedLimit`] kept in the store.
pub(crate) struct StoreLimit {
    store: Arc<dyn Store>,
    /// This worker's id; each slot it takes is held as `<owner>#<n>`.
    owner: String,
}

impl StoreLimit {
    pub(crate) fn new(store: Arc<dyn Store>, owner: String) -> StoreLimit {
        StoreLimit { store, owner }
    }

    /// A name for one slot or spend, unique in the fleet: the worker's id
    /// and a number no other limit of this process hands out (two engines
    /// in one process share the worker's id).
    fn holder(&self) -> String {
        static TAKEN: AtomicU64 = AtomicU64::new(0);
        format!("{}#{}", self.owner, TAKEN.fetch_add(1, Ordering::Relaxed))
    }
}

/// Asks `try_once` (given the time) until it answers, waiting 20 ms
/// doubling to 500 ms between asks: LLM calls last seconds, so a freed slot
/// or budget waits at most a fraction of one.
async fn poll<T, Fut>(mut try_once: impl FnMut(Millis) -> Fut) -> Result<T, String>
where
    Fut: std::future::Future<Output = factory_store::Result<Option<T>>>,
{
    let mut wait = Duration::from_millis(20);
    loop {
        if let Some(done) = try_once(now_ms())
            .await
            .map_err(|error| error.to_string())?
        {
            return Ok(done);
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(500));
    }
}

#[async_trait]
impl SharedLimit for StoreLimit {
    async fn acquire(&self, key: &str, limit: usize) -> Result<SharedPermit, String> {
        let holder = self.holder();
        let limit = u32::try_from(limit).unwrap_or(u32::MAX).max(1);
        let slot = poll(|now| {
            self.store
                .take_permit(key, limit, &holder, now, now + HOLD.as_millis() as Millis)
        })
        .await?;
        let held = Held {
            store: self.store.clone(),
            key: key.to_string(),
            slot,
            holder,
        };
        Ok(SharedPermit(Box::new(held.keep())))
    }

    async fn spend(&self, key: &str, requests: u32, window: Duration) -> Result<(), String> {
        let holder = self.holder();
        poll(|now| {
            self.store.take_permit(
                key,
                requests.max(1),
                &holder,
                now,
                now + window.as_millis() as Millis,
            )
        })
        .await
        .map(|_slot| ())
    }

    async fn spend_tokens(
        &self,
        key: &str,
        limit: u64,
        amount: u64,
        window: Duration,
    ) -> Result<String, String> {
        let holder = self.holder();
        let (store, spender) = (&self.store, &holder);
        poll(|now| async move {
            let spent = store
                .spend_budget(
                    key,
                    spender,
                    amount,
                    limit,
                    now,
                    now + window.as_millis() as Millis,
                )
                .await?;
            Ok(spent.then_some(()))
        })
        .await?;
        Ok(holder)
    }

    async fn settle_tokens(&self, key: &str, holder: &str, amount: u64) -> Result<(), String> {
        self.store
            .settle_budget(key, holder, amount)
            .await
            .map_err(|error| error.to_string())
    }
}

#[derive(Clone)]
struct Held {
    store: Arc<dyn Store>,
    key: String,
    slot: u32,
    holder: String,
}

impl Held {
    /// Renews the slot every third of [`HOLD`] until the guard is dropped.
    fn keep(self) -> Guard {
        let held = self.clone();
        let renewal = tokio::spawn(async move {
            loop {
                tokio::time::sleep(HOLD / 3).await;
                let until = now_ms() + HOLD.as_millis() as Millis;
                match held
                    .store
                    .keep_permit(&held.key, held.slot, &held.holder, Some(until))
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(key = %held.key, slot = held.slot, "a shared LLM slot ran out while held");
                        return;
                    }
                    Err(error) => tracing::warn!(%error, "cannot renew a shared LLM slot"),
                }
            }
        });
        Guard {
            held: self,
            renewal,
        }
    }
}

/// Gives the slot back when dropped (at once, in the background; if that
/// fails, the slot frees itself when its time runs out).
struct Guard {
    held: Held,
    renewal: tokio::task::JoinHandle<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.renewal.abort();
        let held = self.held.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = held
                    .store
                    .keep_permit(&held.key, held.slot, &held.holder, None)
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// Two workers on one store keep one rate limit together: the fourth
    /// request of a 3-per-window limit waits for the first to age out,
    /// whichever worker makes it.
    #[tokio::test]
    async fn workers_share_a_rate_limit_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store: Arc<dyn Store> =
            Arc::from(factory_store::open(path.to_str().unwrap()).await.unwrap());
        let a = StoreLimit::new(store.clone(), "worker-a".into());
        let b = StoreLimit::new(store.clone(), "worker-b".into());
        let window = Duration::from_millis(1500);
        let started = Instant::now();
        a.spend("llm x requests", 3, window).await.unwrap();
        b.spend("llm x requests", 3, window).await.unwrap();
        a.spend("llm x requests", 3, window).await.unwrap();
        // Another key has its own window.
        b.spend("llm y requests", 3, window).await.unwrap();
        assert!(started.elapsed() < window, "three turns are free");
        b.spend("llm x requests", 3, window).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1490),
            "the fourth waited for the window: {:?}",
            started.elapsed()
        );
    }

    /// Two workers keep one token budget: once worker a's spend is settled
    /// to what its request used, worker b's fits; over the budget, b waits
    /// for the window.
    #[tokio::test]
    async fn workers_share_a_token_limit_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store: Arc<dyn Store> =
            Arc::from(factory_store::open(path.to_str().unwrap()).await.unwrap());
        let a = StoreLimit::new(store.clone(), "worker-a".into());
        let b = StoreLimit::new(store.clone(), "worker-b".into());
        let key = "llm x tokens";
        let window = Duration::from_millis(1500);
        let started = Instant::now();
        let first = a.spend_tokens(key, 1_000, 800, window).await.unwrap();
        a.settle_tokens(key, &first, 150).await.unwrap();
        b.spend_tokens(key, 1_000, 800, window).await.unwrap();
        assert!(started.elapsed() < window, "150 + 800 fit 1,000");
        b.spend_tokens(key, 1_000, 800, window).await.unwrap();
        assert!(
            started.elapsed() >= Duration::from_millis(1490),
            "950 + 800 waited for the window: {:?}",
            started.elapsed()
        );
    }
}

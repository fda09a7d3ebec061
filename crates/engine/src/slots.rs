//! The blocks one process runs at once, shared by every run it drives.
//!
//! A standing worker drives many runs; `--slots` bounds what it runs in
//! all of them together. Slots are shared fairly: a run that has work may
//! hold at most its share (the slots divided by the runs that have work,
//! rounded up), so one huge run cannot keep a small one waiting — the huge
//! run gives slots back as its blocks finish and gets no more than its share
//! while the small one wants them.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::Notify;

#[derive(Debug, Default, Clone, Copy)]
struct Share {
    /// Slots this run holds (blocks running, or reserved for a commit).
    held: usize,
    /// It has ready blocks it could not start.
    wants: bool,
}

pub(crate) struct SlotPool {
    /// 0: no limit.
    total: usize,
    runs: Mutex<HashMap<String, Share>>,
    /// Told when slots are given back, so a run waiting for one looks again.
    freed: Notify,
}

impl SlotPool {
    pub(crate) fn new(total: usize) -> SlotPool {
        SlotPool {
            total,
            runs: Mutex::new(HashMap::new()),
            freed: Notify::new(),
        }
    }

    /// Reserves up to the run's fair share of the free slots for one
    /// commit's starts; give back what was not used with [`SlotPool::release`].
    pub(crate) fn reserve(&self, run: &str) -> usize {
        if self.total == 0 {
            return usize::MAX;
        }
        let Ok(mut runs) = self.runs.lock() else {
            return 0;
        };
        runs.entry(run.to_string()).or_default().wants = true;
        let used: usize = runs.values().map(|s| s.held).sum();
        let contenders = runs.values().filter(|s| s.wants || s.held > 0).count();
        let share = self.total.div_ceil(contenders.max(1));
        let Some(entry) = runs.get_mut(run) else {
            return 0;
        };
        let grant = self
            .total
            .saturating_sub(used)
            .min(share.saturating_sub(entry.held));
        entry.held += grant;
        grant
    }

    /// Gives back `n` slots of finished attempts, records whether the run
    /// still has ready blocks it could not start, and wakes the runs waiting
    /// for a slot.
    pub(crate) fn release(&self, run: &str, n: usize, still_wants: bool) {
        if self.give_back(run, n, still_wants) && n > 0 {
            self.freed.notify_waiters();
        }
    }

    /// Gives back the part of a reservation no block was started with,
    /// without waking anyone: a run whose ready blocks are all in backoff
    /// would otherwise wake another such run, which would wake it back, and
    /// so on. The slots go to the next run that looks.
    pub(crate) fn unreserve(&self, run: &str, n: usize, still_wants: bool) {
        self.give_back(run, n, still_wants);
    }

    /// False when slots are not counted.
    fn give_back(&self, run: &str, n: usize, still_wants: bool) -> bool {
        if self.total == 0 {
            return false;
        }
        if let Ok(mut runs) = self.runs.lock()
            && let Some(entry) = runs.get_mut(run)
        {
            entry.held = entry.held.saturating_sub(n);
            entry.wants = still_wants;
            if entry.held == 0 && !entry.wants {
                runs.remove(run);
            }
        }
        true
    }

    /// The run is no longer driven here: everything it held is free.
    pub(crate) fn leave(&self, run: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.remove(run);
        }
        self.freed.notify_waiters();
    }

    /// Resolves when slots are given back.
    pub(crate) async fn freed(&self) {
        self.freed.notified().await;
    }

    /// Whether slots are counted at all (`--slots 0` counts none).
    pub(crate) fn is_limited(&self) -> bool {
        self.total != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_gets_at_most_its_share_while_another_wants_slots() {
        let pool = SlotPool::new(8);
        assert_eq!(pool.reserve("huge"), 8, "alone, a run may take every slot");
        assert_eq!(pool.reserve("small"), 0, "nothing is free");
        // The huge run finishes two blocks: they go to the small run, whose
        // share is half, not back to the huge one.
        pool.release("huge", 2, true);
        assert_eq!(
            pool.reserve("huge"),
            0,
            "the huge run holds more than its share"
        );
        assert_eq!(pool.reserve("small"), 2);
        pool.release("huge", 3, true);
        assert_eq!(pool.reserve("small"), 2, "up to its share of four");
        assert_eq!(
            pool.reserve("huge"),
            1,
            "the rest goes back to the huge run"
        );
    }

    #[test]
    fn unused_reservations_and_finished_runs_free_their_slots() {
        let pool = SlotPool::new(4);
        assert_eq!(pool.reserve("a"), 4);
        pool.release("a", 3, false);
        assert_eq!(pool.reserve("b"), 2, "b's share with a still holding one");
        pool.leave("a");
        assert_eq!(pool.reserve("b"), 2, "a left: b may take every slot");
        pool.release("b", 4, false);
        assert_eq!(pool.reserve("c"), 4);
    }

    #[test]
    fn no_limit_reserves_without_counting() {
        let pool = SlotPool::new(0);
        assert_eq!(pool.reserve("a"), usize::MAX);
        pool.release("a", 5, false);
        assert_eq!(pool.reserve("a"), usize::MAX);
    }
}

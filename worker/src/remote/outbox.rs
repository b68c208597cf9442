//! What the completer knows of each response queue it sends to: whether a
//! send to it is due, and what its failures come to. A send is tried once
//! per flush, not retried in place, so that one failing queue (a batch's
//! queue deleted by hand, or refused by a policy of its own) never holds the
//! results of the worker's other batches behind it.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::retry::Backoff;

/// What a failed send comes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failing {
    /// Try this queue again at its next retry.
    Retry,
    /// This queue has refused every send for the limit while another
    /// queue's sends succeeded (or within the limit before): the refusal is
    /// the queue's (a policy on it), not the worker's. Its batch's bundles
    /// go back, for the workers that can send, or the dead-letter queue past
    /// their receives; the worker goes on with its other batches.
    GiveBack,
    /// Every send, to this queue and any other, has failed for
    /// `give_up_after`: the worker cannot send results at all (IAM without
    /// `sqs:SendMessage`, say) and stops.
    GiveUp { failing_for: Duration },
}

#[derive(Debug)]
struct QueueState {
    /// Since when every send failed (a queue that exists).
    failing_since: Option<Instant>,
    /// Since when the queue has not been found.
    missing_since: Option<Instant>,
    retry_at: Instant,
    /// Between tries of this queue, as between any retried calls.
    backoff: Backoff,
}

#[derive(Debug, Default)]
pub struct Outbox {
    queues: HashMap<String, QueueState>,
    /// When a send last succeeded, to any queue.
    last_success: Option<Instant>,
}

impl Outbox {
    /// Whether a send to `reply_to` may be tried at `now`.
    pub fn due(&self, reply_to: &str, now: Instant) -> bool {
        self.queues.get(reply_to).is_none_or(|q| q.retry_at <= now)
    }

    /// The earliest retry of a queue that is failing, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.queues.values().map(|q| q.retry_at).min()
    }

    pub fn sent(&mut self, reply_to: &str, now: Instant) {
        self.queues.remove(reply_to);
        self.last_success = Some(now);
    }

    /// The queue's results were dropped (its batch is gone): nothing waits
    /// for it.
    pub fn forget(&mut self, reply_to: &str) {
        self.queues.remove(reply_to);
    }

    /// Keeps only the queues that still have results waiting: a queue's
    /// failures count from the first send that waits on it, so a bundle
    /// that comes later is not given back for an old failure.
    pub fn retain(&mut self, mut waiting: impl FnMut(&str) -> bool) {
        self.queues.retain(|reply_to, _| waiting(reply_to));
    }

    /// A send to `reply_to` found no queue at `now`: whether it has been
    /// missing for less than `window` (send again at its retry; the batch's
    /// runner makes it again).
    pub fn missing(&mut self, reply_to: &str, now: Instant, window: Duration) -> bool {
        let q = self.state(reply_to, now);
        q.failing_since = None;
        let since = *q.missing_since.get_or_insert(now);
        now.duration_since(since) < window
    }

    /// A send to an existing `reply_to` failed at `now`. `give_up_after`:
    /// the worker's limit (`None`: it never stops, but a queue refused while
    /// others take results still gives its bundles back after `give_back_after`).
    pub fn failed(
        &mut self,
        reply_to: &str,
        now: Instant,
        give_up_after: Option<Duration>,
        give_back_after: Duration,
    ) -> Failing {
        let last_success = self.last_success;
        let q = self.state(reply_to, now);
        q.missing_since = None;
        let since = *q.failing_since.get_or_insert(now);
        let failing_for = now.duration_since(since);
        let limit = give_up_after.unwrap_or(give_back_after);
        // Another queue took results while this one failed, or shortly
        // before (its batch may have just ended): the worker can send.
        let others_sent = last_success.is_some_and(|at| at + limit > since);
        if others_sent {
            if failing_for >= limit {
                return Failing::GiveBack;
            }
        } else if give_up_after.is_some_and(|limit| failing_for >= limit) {
            return Failing::GiveUp { failing_for };
        }
        Failing::Retry
    }

    /// The queue's state, its retry pushed back by the backoff.
    fn state(&mut self, reply_to: &str, now: Instant) -> &mut QueueState {
        let q = self
            .queues
            .entry(reply_to.to_string())
            .or_insert(QueueState {
                failing_since: None,
                missing_since: None,
                retry_at: now,
                backoff: Backoff::new(),
            });
        q.retry_at = now + q.backoff.step();
        q
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn a_failing_queue_is_tried_again_after_a_growing_backoff() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        assert!(out.due("a", t0));
        assert_eq!(out.next_retry(), None);
        assert_eq!(out.failed("a", t0, None, S(120)), Failing::Retry);
        assert!(!out.due("a", t0));
        assert!(out.due("b", t0), "another queue is not held back");
        assert_eq!(out.next_retry(), Some(t0 + Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert!(out.due("a", t1));
        out.failed("a", t1, None, S(120));
        assert_eq!(out.next_retry(), Some(t1 + Duration::from_millis(200)));
        let mut t = t1;
        for _ in 0..10 {
            out.failed("a", t, None, S(120));
            t += S(1);
        }
        assert_eq!(out.next_retry(), Some(t - S(1) + Backoff::MAX), "capped");
        out.sent("a", t);
        assert!(out.due("a", t));
        assert_eq!(out.next_retry(), None);
    }

    #[test]
    fn a_worker_whose_every_send_fails_gives_up_after_its_limit() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let limit = Some(S(120));
        assert_eq!(out.failed("a", t0, limit, S(120)), Failing::Retry);
        assert_eq!(out.failed("a", t0 + S(119), limit, S(120)), Failing::Retry);
        assert_eq!(
            out.failed("a", t0 + S(120), limit, S(120)),
            Failing::GiveUp {
                failing_for: S(120)
            }
        );
        // A send that succeeded long before the failures began says nothing.
        let mut out = Outbox::default();
        out.sent("b", t0);
        out.failed("a", t0 + S(120), limit, S(120));
        assert_eq!(
            out.failed("a", t0 + S(240), limit, S(120)),
            Failing::GiveUp {
                failing_for: S(120)
            }
        );
        // Without a limit the worker never stops.
        let mut out = Outbox::default();
        out.failed("a", t0, None, S(120));
        assert_eq!(out.failed("a", t0 + S(999), None, S(120)), Failing::Retry);
    }

    #[test]
    fn a_queue_refused_while_others_take_results_gives_its_bundles_back() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        out.failed("a", t0, Some(S(120)), S(300));
        out.sent("b", t0 + S(1));
        assert_eq!(
            out.failed("a", t0 + S(60), Some(S(120)), S(300)),
            Failing::Retry
        );
        assert_eq!(
            out.failed("a", t0 + S(120), Some(S(120)), S(300)),
            Failing::GiveBack
        );
        // Results of it still waiting go back at their next try.
        assert_eq!(
            out.failed("a", t0 + S(130), Some(S(120)), S(300)),
            Failing::GiveBack
        );
        // Another batch's last results shortly before the failures began.
        let mut out = Outbox::default();
        out.sent("b", t0);
        out.failed("a", t0 + S(119), Some(S(120)), S(300));
        assert_eq!(
            out.failed("a", t0 + S(239), Some(S(120)), S(300)),
            Failing::GiveBack
        );
        // Without the worker's limit, after `give_back_after`.
        let mut out = Outbox::default();
        out.failed("a", t0, None, S(300));
        out.sent("b", t0 + S(1));
        assert_eq!(out.failed("a", t0 + S(299), None, S(300)), Failing::Retry);
        assert_eq!(
            out.failed("a", t0 + S(300), None, S(300)),
            Failing::GiveBack
        );
    }

    #[test]
    fn a_missing_queue_is_sent_to_again_within_its_window() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        assert!(out.missing("a", t0, S(120)));
        assert!(out.missing("a", t0 + S(119), S(120)));
        assert!(!out.missing("a", t0 + S(120), S(120)));
        out.forget("a");
        assert!(out.due("a", t0 + S(120)));
        // Found again (refusing now): the window starts over next time.
        assert!(out.missing("b", t0, S(120)));
        out.failed("b", t0 + S(100), None, S(120));
        assert!(out.missing("b", t0 + S(200), S(120)));
    }
}

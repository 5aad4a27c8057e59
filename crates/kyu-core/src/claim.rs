//! What a claim may take from a queue: pause, concurrency and rate limits,
//! and fair shares across groups (tenants, customers).
//!
//! A backend reads the queue's row and the counts it needs inside the
//! claim's transaction (so the limits hold across every node), asks
//! [`plan_claim`] how many jobs it may hand out, and [`group_quotas`] how to
//! split them between groups; then it takes that many with its own SQL.

use std::collections::HashMap;

use crate::{Millis, RateLimit};

/// A fixed rate-limit window: when it opened and how many claims it has had.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateWindow {
    /// When the window opened.
    pub start: Millis,
    /// Claims made in it so far.
    pub used: i64,
}

/// A queue's settings and limiter state, as read inside the claim.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueLimits {
    /// Claims return nothing while paused.
    pub paused: bool,
    /// Most jobs running at once across all workers.
    pub concurrency: Option<i64>,
    /// Most claims per window.
    pub rate: Option<RateLimit>,
    /// The stored window, if one was ever opened.
    pub window: Option<RateWindow>,
    /// Most jobs running at once per group.
    pub group_concurrency: Option<i64>,
    /// The last group a claim served.
    pub group_cursor: Option<String>,
}

impl QueueLimits {
    /// Whether claims must count and serialise on the queue (a backend may
    /// skip reading limits, and locking, for queues without any).
    pub fn is_limited(&self) -> bool {
        self.concurrency.is_some() || self.rate.is_some() || self.group_concurrency.is_some()
    }
}

/// What a claim may take from one queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPlan {
    /// Most jobs to take.
    pub n: usize,
    /// The rate window in force, when the queue is rate-limited.
    pub window: Option<RateWindow>,
    /// With `group_concurrency`: the cap per group and the round-robin cursor.
    pub groups: Option<(i64, Option<String>)>,
}

impl ClaimPlan {
    /// The window to store after `claimed` jobs were taken, if it changed.
    pub fn window_after(&self, claimed: usize) -> Option<RateWindow> {
        let w = self.window?;
        (claimed > 0).then_some(RateWindow { start: w.start, used: w.used + claimed as i64 })
    }
}

/// How many of `want` jobs a queue may hand out at `now`, with `running` of
/// its jobs running (only read when it has a concurrency limit). `None`
/// when it may hand out none. The rate limit is a fixed window that opens
/// at the first claim after the previous one closed.
pub fn plan_claim(now: Millis, want: usize, limits: &QueueLimits, running: i64) -> Option<ClaimPlan> {
    if limits.paused || want == 0 {
        return None;
    }
    let mut allowed = want as i64;
    if let Some(max_running) = limits.concurrency {
        allowed = allowed.min(max_running - running);
    }
    let mut window = None;
    if let Some(rate) = limits.rate {
        let current = match limits.window {
            Some(w) if now < w.start.plus_ms(rate.per_ms) => w,
            _ => RateWindow { start: now, used: 0 },
        };
        allowed = allowed.min(rate.max - current.used);
        window = Some(current);
    }
    let groups = limits.group_concurrency.map(|cap| (cap, limits.group_cursor.clone()));
    (allowed > 0).then_some(ClaimPlan { n: allowed as usize, window, groups })
}

/// How many jobs each group may get in a claim of `want`, round-robin.
///
/// `groups` are the groups with queued jobs, ascending; `cursor` is the last
/// group a claim served, so this one starts after it; each group may have at
/// most `cap` running, `running` of which it has already. Jobs are handed out
/// one per group per round, so one group with a million jobs cannot starve a
/// group with ten. Returns `(group, quota)` in serving order, quotas > 0.
pub fn group_quotas(
    groups: &[String],
    cursor: Option<&str>,
    running: &HashMap<String, i64>,
    cap: i64,
    want: usize,
) -> Vec<(String, usize)> {
    let split = cursor.map_or(0, |c| groups.partition_point(|g| g.as_str() <= c));
    let order: Vec<&String> = groups[split..].iter().chain(groups[..split].iter()).collect();
    let mut room: Vec<i64> = order.iter().map(|g| (cap - running.get(*g).copied().unwrap_or(0)).max(0)).collect();
    let mut quota = vec![0usize; order.len()];
    let mut left = want;
    while left > 0 {
        let mut gave = false;
        for (i, r) in room.iter_mut().enumerate() {
            if left == 0 {
                break;
            }
            if *r > 0 {
                *r -= 1;
                quota[i] += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    order.into_iter().zip(quota).filter(|(_, q)| *q > 0).map(|(g, q)| (g.clone(), q)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_cap_the_claim() {
        let now = Millis(1_000);
        assert_eq!(plan_claim(now, 5, &QueueLimits::default(), 0).unwrap().n, 5);
        assert!(plan_claim(now, 5, &QueueLimits { paused: true, ..Default::default() }, 0).is_none());
        let conc = QueueLimits { concurrency: Some(3), ..Default::default() };
        assert_eq!(plan_claim(now, 5, &conc, 1).unwrap().n, 2);
        assert!(plan_claim(now, 5, &conc, 3).is_none());
        let rate = RateLimit { max: 4, per_ms: 100 };
        let open = QueueLimits { rate: Some(rate), window: Some(RateWindow { start: Millis(950), used: 3 }), ..Default::default() };
        let plan = plan_claim(now, 5, &open, 0).unwrap();
        assert_eq!((plan.n, plan.window_after(1)), (1, Some(RateWindow { start: Millis(950), used: 4 })));
        let closed = QueueLimits { window: Some(RateWindow { start: Millis(800), used: 4 }), ..open };
        let plan = plan_claim(now, 5, &closed, 0).unwrap();
        assert_eq!((plan.n, plan.window_after(2)), (4, Some(RateWindow { start: now, used: 2 })));
        assert_eq!(plan.window_after(0), None);
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn round_robin_from_the_cursor_within_caps() {
        let groups = names(&["a", "b", "c"]);
        let none = HashMap::new();
        assert_eq!(group_quotas(&groups, None, &none, 10, 4), vec![("a".into(), 2), ("b".into(), 1), ("c".into(), 1)]);
        assert_eq!(group_quotas(&groups, Some("a"), &none, 10, 2), vec![("b".into(), 1), ("c".into(), 1)]);
        let running = HashMap::from([("a".to_string(), 2), ("b".to_string(), 1)]);
        assert_eq!(group_quotas(&groups, None, &running, 2, 10), vec![("b".into(), 1), ("c".into(), 2)]);
        assert!(group_quotas(&groups, None, &HashMap::from([("a".into(), 1), ("b".into(), 1), ("c".into(), 1)]), 1, 5).is_empty());
    }
}

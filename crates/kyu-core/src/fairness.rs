//! Fair claims across groups (tenants, customers): `group_concurrency`.

use std::collections::HashMap;

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

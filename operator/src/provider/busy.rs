//! Which machines of an EC2 fleet run tasks, from the workers' heartbeat
//! rows, so that a scale-down removes idle machines first. A row names its
//! worker's host; on EC2 that is the instance's private DNS name (its first
//! label: `ip-10-0-1-23`, or the instance id with resource-name hostnames),
//! which DescribeInstances shows too.

use std::collections::BTreeMap;
use std::time::Duration;

use cloudkon_core::Timestamp;
use cloudkon_core::aws::WorkerHeartbeat;

/// Tasks running per host, from fresh heartbeat rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BusyHosts(BTreeMap<String, u32>);

impl BusyHosts {
    /// The hosts of rows written within `fresh` of `now` that run tasks (an
    /// older row says nothing: its worker may be gone or idle since).
    pub fn from_rows(rows: &[WorkerHeartbeat], now: Timestamp, fresh: Duration) -> Self {
        let fresh = u64::try_from(fresh.as_micros()).unwrap_or(u64::MAX);
        let mut hosts = BTreeMap::new();
        for row in rows {
            if row.busy == 0 || now.0.saturating_sub(row.last_seen.0) > fresh {
                continue;
            }
            *hosts.entry(host_name(&row.host)).or_insert(0) += row.busy;
        }
        BusyHosts(hosts)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Tasks running on the instance `id` whose private DNS name is
    /// `private_dns` (either may be its host name).
    pub fn tasks_on(&self, id: &str, private_dns: Option<&str>) -> u32 {
        let by_id = self.0.get(&host_name(id)).copied().unwrap_or(0);
        let by_dns = private_dns
            .filter(|d| !d.is_empty())
            .and_then(|d| self.0.get(&host_name(d)).copied())
            .unwrap_or(0);
        by_id.max(by_dns)
    }
}

/// A host name as both sides spell it: its first label, lower case
/// (`hostname` may print the FQDN, `ip-10-0-1-23.ec2.internal`).
fn host_name(name: &str) -> String {
    name.split('.').next().unwrap_or(name).to_ascii_lowercase()
}

/// A machine of a fleet, for the choice of which go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub id: String,
    /// Tasks running on it (see [`BusyHosts::tasks_on`]).
    pub tasks: u32,
    /// Launch time (seconds, nanoseconds); `None` while pending.
    pub launched: Option<(i64, u32)>,
}

/// The `n` of `machines` to remove, in order: idle first, the fewest tasks
/// next, then the newest (it has done the least work; a pending one none at
/// all), ties by id for a stable choice.
pub fn surplus_idle_first(machines: &[Machine], n: usize) -> Vec<&Machine> {
    let mut order: Vec<&Machine> = machines.iter().collect();
    let age = |m: &Machine| m.launched.unwrap_or((i64::MAX, u32::MAX));
    order.sort_by(|a, b| {
        a.tasks
            .cmp(&b.tasks)
            .then_with(|| age(b).cmp(&age(a)))
            .then_with(|| b.id.cmp(&a.id))
    });
    order.truncate(n);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(host: &str, busy: u32, seen: u64) -> WorkerHeartbeat {
        WorkerHeartbeat {
            id: format!("{host}-1234"),
            host: host.into(),
            slots: 8,
            busy,
            tasks_done: 0,
            started_at: Timestamp(0),
            last_seen: Timestamp(seen),
        }
    }

    #[test]
    fn fresh_busy_rows_name_their_instances_by_dns_name_or_id() {
        let now = Timestamp(100_000_000);
        let rows = [
            row("ip-10-0-1-23.ec2.internal", 3, now.0),
            row("IP-10-0-1-24", 2, now.0 - 1_000_000),
            row("i-0abc", 1, now.0),
            // Idle, or seen too long ago: not busy.
            row("ip-10-0-1-25", 0, now.0),
            row("ip-10-0-1-26", 4, now.0 - 61_000_000),
        ];
        let busy = BusyHosts::from_rows(&rows, now, Duration::from_secs(60));
        assert_eq!(busy.tasks_on("i-1", Some("ip-10-0-1-23.ec2.internal")), 3);
        assert_eq!(busy.tasks_on("i-2", Some("ip-10-0-1-24.ec2.internal")), 2);
        assert_eq!(
            busy.tasks_on("i-0abc", Some("ip-10-0-1-99.ec2.internal")),
            1
        );
        assert_eq!(busy.tasks_on("i-3", Some("ip-10-0-1-25.ec2.internal")), 0);
        assert_eq!(busy.tasks_on("i-4", Some("ip-10-0-1-26.ec2.internal")), 0);
        assert_eq!(busy.tasks_on("i-5", None), 0);
        assert!(!busy.is_empty());
        assert!(BusyHosts::from_rows(&rows[3..], now, Duration::from_secs(60)).is_empty());
    }

    fn machine(id: &str, tasks: u32, launched: Option<(i64, u32)>) -> Machine {
        Machine {
            id: id.into(),
            tasks,
            launched,
        }
    }

    fn ids(machines: Vec<&Machine>) -> Vec<&str> {
        machines.into_iter().map(|m| m.id.as_str()).collect()
    }

    #[test]
    fn idle_machines_go_first_then_the_newest() {
        let machines = [
            machine("i-old-busy", 2, Some((100, 0))),
            machine("i-new-busy", 1, Some((300, 0))),
            machine("i-old-idle", 0, Some((100, 0))),
            machine("i-new-idle", 0, Some((200, 0))),
            machine("i-pending", 0, None),
        ];
        assert_eq!(
            ids(surplus_idle_first(&machines, 4)),
            ["i-pending", "i-new-idle", "i-old-idle", "i-new-busy"]
        );
        assert!(surplus_idle_first(&machines, 0).is_empty());
        assert_eq!(surplus_idle_first(&machines, 9).len(), 5);
    }

    #[test]
    fn ties_break_by_id() {
        let machines = [
            machine("i-a", 0, Some((100, 0))),
            machine("i-c", 0, Some((100, 0))),
            machine("i-b", 0, Some((100, 0))),
        ];
        assert_eq!(ids(surplus_idle_first(&machines, 2)), ["i-c", "i-b"]);
    }
}

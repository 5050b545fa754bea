//! Schedules: cron expressions per connector, evaluated on Europe/Stockholm wall-clock time.
//!
//! A tick is claimed by inserting `(connector, scheduled_for)` under a unique key
//! (`Store::claim_tick`), so it fires once however many replicas see it. Ticks missed while no
//! replica ran follow the connector's catch-up policy; a run never overlaps another run of the
//! same connector (connector lease).

use crate::config::CatchUp;
use anyhow::{anyhow, Result};
use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use croner::Cron;

pub mod runner;

/// Parse a cron expression (5 fields, or 6 with seconds).
pub fn parse_cron(expr: &str) -> Result<Cron> {
    Cron::new(expr).with_seconds_optional().parse().map_err(|e| anyhow!("{e}"))
}

/// The first occurrence strictly after `after`, evaluated on Stockholm wall-clock time. In the
/// spring gap a time that does not exist moves forward (02:30 → 03:00 on 29 March); in the
/// autumn fold a wall-clock time that occurs twice fires once (the first).
pub fn next_after(cron: &Cron, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let local = after.with_timezone(&Stockholm);
    let next = cron.find_next_occurrence(&local, false).map_err(|e| anyhow!("{e}"))?;
    let mut t = next.with_timezone(&Utc);
    // croner searches on the naive local clock; in the autumn fold it may map back to an
    // instant not after `after` (the repeated hour): step past the fold.
    if t <= after {
        let later = (local + chrono::Duration::hours(1)).with_timezone(&Stockholm);
        t = cron.find_next_occurrence(&later, false).map_err(|e| anyhow!("{e}"))?.with_timezone(&Utc);
    }
    Ok(t)
}

/// What to do about one occurrence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TickAction {
    /// On time (or the one catch-up run): claim and run.
    Run,
    /// Missed and skipped by policy: claim (so no replica considers it again) without running.
    Skip,
}

/// The occurrences due between the last claimed tick and `now`, with what to do about each.
/// `reference` is the last claimed tick (or, when none, the daemon's start: nothing earlier is
/// owed). An occurrence older than `grace` is "missed": `Skip` skips all missed ones; `RunOnce`
/// runs only the latest missed one. At most `limit` occurrences are considered.
pub fn due_ticks(cron: &Cron, reference: DateTime<Utc>, now: DateTime<Utc>, policy: CatchUp, grace: chrono::Duration) -> Result<Vec<(DateTime<Utc>, TickAction)>> {
    let mut occ = vec![];
    let mut t = reference;
    for _ in 0..10_000 {
        let n = next_after(cron, t)?;
        if n > now {
            break;
        }
        occ.push(n);
        t = n;
    }
    let mut out = Vec::with_capacity(occ.len());
    let latest_missed = occ.iter().rev().find(|o| now - **o > grace).copied();
    for o in occ {
        let missed = now - o > grace;
        let action = if !missed {
            TickAction::Run
        } else {
            match policy {
                CatchUp::Skip => TickAction::Skip,
                CatchUp::RunOnce => {
                    if Some(o) == latest_missed {
                        TickAction::Run
                    } else {
                        TickAction::Skip
                    }
                }
            }
        };
        out.push((o, action));
    }
    // RunOnce: if an on-time tick runs anyway, the missed one need not run as well.
    if policy == CatchUp::RunOnce && out.iter().filter(|(_, a)| *a == TickAction::Run).count() > 1 {
        let last_run = out.iter().rposition(|(_, a)| *a == TickAction::Run).expect("some run");
        for (i, (_, a)) in out.iter_mut().enumerate() {
            if i != last_run {
                *a = TickAction::Skip;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, mi, 0).unwrap()
    }

    /// Step a simulated clock minute by minute and collect the runs a daily 02:30 job makes.
    fn simulate(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
        let cron = parse_cron("30 2 * * *").unwrap();
        let mut reference = from;
        let mut now = from;
        let mut fired = vec![];
        while now <= to {
            for (t, a) in due_ticks(&cron, reference, now, CatchUp::Skip, chrono::Duration::minutes(5)).unwrap() {
                reference = t;
                if a == TickAction::Run {
                    fired.push(t);
                }
            }
            now += chrono::Duration::minutes(1);
        }
        fired
    }

    #[test]
    fn daily_0230_fires_once_on_both_dst_days_of_2026() {
        // Spring forward: 29 March 2026, 02:00 → 03:00 local; 02:30 does not exist.
        let fired = simulate(utc(2026, 3, 27, 12, 0), utc(2026, 3, 31, 12, 0));
        let days: Vec<String> = fired.iter().map(|t| t.with_timezone(&Stockholm).format("%m-%d %H:%M").to_string()).collect();
        assert_eq!(days, vec!["03-28 02:30", "03-29 03:00", "03-30 02:30", "03-31 02:30"]);
        // Fall back: 25 October 2026, 03:00 → 02:00 local; 02:30 happens twice.
        let fired = simulate(utc(2026, 10, 23, 12, 0), utc(2026, 10, 27, 12, 0));
        let days: Vec<String> = fired.iter().map(|t| t.with_timezone(&Stockholm).format("%m-%d %H:%M %z").to_string()).collect();
        assert_eq!(days, vec!["10-24 02:30 +0200", "10-25 02:30 +0200", "10-26 02:30 +0100", "10-27 02:30 +0100"]);
    }

    #[test]
    fn catch_up_policies() {
        let cron = parse_cron("0 * * * *").unwrap();
        let grace = chrono::Duration::minutes(5);
        // Down from 01:00 to 05:02: four hourly ticks missed, 05:00 is on time.
        let due = due_ticks(&cron, utc(2026, 1, 5, 1, 0), utc(2026, 1, 5, 5, 2), CatchUp::Skip, grace).unwrap();
        assert_eq!(due.iter().filter(|(_, a)| *a == TickAction::Run).count(), 1);
        assert_eq!(due.last().unwrap(), &(utc(2026, 1, 5, 5, 0), TickAction::Run));
        // Down until 05:30: 02..05 missed. Skip runs nothing; RunOnce runs once (the latest).
        let skip = due_ticks(&cron, utc(2026, 1, 5, 1, 0), utc(2026, 1, 5, 5, 30), CatchUp::Skip, grace).unwrap();
        assert_eq!(skip.len(), 4);
        assert!(skip.iter().all(|(_, a)| *a == TickAction::Skip));
        let once = due_ticks(&cron, utc(2026, 1, 5, 1, 0), utc(2026, 1, 5, 5, 30), CatchUp::RunOnce, grace).unwrap();
        assert_eq!(once.iter().filter(|(_, a)| *a == TickAction::Run).map(|(t, _)| *t).collect::<Vec<_>>(), vec![utc(2026, 1, 5, 5, 0)]);
    }
}

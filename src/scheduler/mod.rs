//! Schedules: cron expressions evaluated in Europe/Stockholm; ticks claimed once across replicas.

use anyhow::{anyhow, Result};
use chrono::{DateTime, Utc};
use chrono_tz::Europe::Stockholm;
use croner::Cron;

/// Parse a cron expression (5 fields, or 6 with seconds).
pub fn parse_cron(expr: &str) -> Result<Cron> {
    Cron::new(expr).with_seconds_optional().parse().map_err(|e| anyhow!("{e}"))
}

/// The first occurrence strictly after `after`, evaluated on Stockholm wall-clock time.
pub fn next_after(cron: &Cron, after: DateTime<Utc>) -> Result<DateTime<Utc>> {
    let local = after.with_timezone(&Stockholm);
    let next = cron.find_next_occurrence(&local, false).map_err(|e| anyhow!("{e}"))?;
    Ok(next.with_timezone(&Utc))
}

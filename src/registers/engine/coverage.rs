//! Täckningsgrad for the admin page, for any register connector: per clinic, month of first
//! visit and form, how many registrations the journal's courses call for and how many the
//! register holds.

use crate::outbox::{EpisodeRow, Registration};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CoverageRow {
    /// Journal unit (HSA id).
    pub unit: String,
    /// Month of the episode's first visit, `YYYY-MM`.
    pub month: String,
    pub form: String,
    /// Episodes whose window for this form has opened.
    pub expected: u32,
    /// Of those, registrations the register holds (state `present`).
    pub delivered: u32,
}

/// Count expected and delivered registrations. A registration counts for an episode's form when
/// its idempotency key is that episode's key plus `|form` (how the engine builds keys), so two
/// episodes of one patient never share a delivery. Rows are sorted by unit, month and form.
pub fn coverage(episodes: &[EpisodeRow], delivered: &[Registration]) -> Vec<CoverageRow> {
    let present: BTreeSet<&str> = delivered.iter().filter(|r| r.state == "present").map(|r| r.idem_key.as_str()).collect();
    let mut rows: BTreeMap<(String, String, String), (u32, u32)> = BTreeMap::new();
    for e in episodes {
        let month = e.first_visit_date.get(..7).unwrap_or(&e.first_visit_date).to_string();
        for form in &e.forms_due {
            let cell = rows.entry((e.unit.clone(), month.clone(), form.clone())).or_default();
            cell.0 += 1;
            if present.contains(format!("{}|{form}", e.episode_key).as_str()) {
                cell.1 += 1;
            }
        }
    }
    rows.into_iter().map(|((unit, month, form), (expected, delivered))| CoverageRow { unit, month, form, expected, delivered }).collect()
}

//! The sandbox's PVK scenario: what the journal generator does not write but PVK's definitions
//! need. Everything is deterministic from the population's seed, and what reaches the journal
//! goes through the population's public mutation API, so the ground truth (`Truth`) sees it.
//!
//! - a drug list: prescriptions signed at a vårdcentral (the patient's own or the other one),
//!   with treatment days: KOL maintenance drugs (0–3 substances) and oral glucocorticoids of
//!   short or long duration, so the KOL sub-cohort, "signed at the unit" and "longer cortisone
//!   treatment" all have patients on both sides;
//! - full-time equivalents per rehab unit and year (vårdval follow-up; one unit left without);
//! - [`apply_scenario`]: patients with long-term pain (R52.2A–C), new dementia with an
//!   occupational therapist's assessment or cognitive aids, and incontinence work-up (Ink02).

use super::journal::{Population, VisitSpec};
use super::vocabulary::{act, profession, LOCAL_TERMS, REHAB_UNITS, VC_UNITS};
use crate::model::{Code, IdKind};
use anyhow::Result;
use chrono::{Datelike, Duration, NaiveDate};
use std::io::Write;
use std::path::Path;

/// KOL maintenance substances the sandbox prescribes (sandbox-2026.toml `kol_underhall_atc`).
pub const KOL_MAINTENANCE: [&str; 4] = ["R03AK06", "R03AL03", "R03BB04", "R03AC12"];
/// Oral glucocorticoid (sandbox-2026.toml `kortison_atc`).
pub const CORTISONE: &str = "H02AB06";

/// One prescription of the sandbox drug list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxPrescription {
    pub patient: usize,
    /// Personnummer or samordningsnummer (12 digits).
    pub id: String,
    pub atc: String,
    pub date: NaiveDate,
    pub days: u32,
    /// HSA id of the unit where it was signed.
    pub unit: String,
}

fn h(seed: u64, i: usize, salt: u64) -> u64 {
    crate::sandbox::journal::population::mix(seed ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15), i as u64)
}

/// The prescriptions behind the sandbox drug list, derived from the ground truth.
pub fn prescriptions(pop: &Population) -> Vec<SandboxPrescription> {
    let seed = pop.spec().seed;
    let today = pop.spec().today;
    let mut out = vec![];
    for p in pop.truth().patients().filter(|p| p.kind() != IdKind::Reserve) {
        let i = p.index;
        let own = p.listed_at().map(str::to_string);
        let other = |own: &Option<String>| if own.as_deref() == Some(VC_UNITS[0]) { VC_UNITS[1] } else { VC_UNITS[0] }.to_string();
        let kol = p.diagnoses.iter().any(|d| d.code.starts_with("J44"));
        if kol {
            let n = (h(seed, i, 1) % 4) as usize;
            for k in 0..n {
                let r = h(seed, i, 10 + k as u64);
                // Mostly signed at the patient's own vårdcentral; one in four at the other one.
                let unit = if own.is_some() && r % 4 != 0 { own.clone().unwrap() } else { other(&own) };
                out.push(SandboxPrescription {
                    patient: i,
                    id: p.id.raw().to_string(),
                    atc: KOL_MAINTENANCE[(k + (r as usize / 7)) % KOL_MAINTENANCE.len()].to_string(),
                    date: today - Duration::days((r % 400) as i64),
                    days: 90,
                    unit,
                });
            }
        }
        if p.age_at(today) >= 50 && h(seed, i, 2) % 12 == 0 {
            for k in 0..(1 + h(seed, i, 3) % 2) {
                let r = h(seed, i, 20 + k);
                let unit = if own.is_some() && r % 3 != 0 { own.clone().unwrap() } else { other(&own) };
                out.push(SandboxPrescription {
                    patient: i,
                    id: p.id.raw().to_string(),
                    atc: CORTISONE.to_string(),
                    date: today - Duration::days((r % 500) as i64),
                    days: if r % 2 == 0 { 30 } else { 100 },
                    unit,
                });
            }
        }
    }
    out
}

/// Write the drug list as the connector reads it (`personnummer;atc;date;days;prescriber_unit`).
pub fn write_drug_list(pop: &Population, path: &Path) -> Result<usize> {
    let rows = prescriptions(pop);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "personnummer;atc;date;days;prescriber_unit")?;
    for r in &rows {
        writeln!(f, "{};{};{};{};{}", r.id, r.atc, r.date.format("%Y-%m-%d"), r.days, r.unit)?;
    }
    f.flush()?;
    Ok(rows.len())
}

/// Full-time physiotherapists per rehab unit for this year and the one before (the last unit
/// has none configured, so its per-FTE measures say what is missing).
pub fn fte(today: NaiveDate) -> Vec<(String, i32, f64)> {
    let mut out = vec![];
    for (u, v) in REHAB_UNITS.iter().zip([2.5, 1.0, 3.0]) {
        for y in [today.year() - 1, today.year()] {
            out.push((u.to_string(), y, v));
        }
    }
    out
}

/// Add the scenario's visits (long-term pain, dementia, incontinence work-up) to the journal.
/// Returns how many visits were added.
pub fn apply_scenario(pop: &Population) -> Result<usize> {
    let seed = pop.spec().seed;
    let today = pop.spec().today;
    let mut added = 0;
    let patients: Vec<_> = pop.truth().patients().filter(|p| p.kind() != IdKind::Reserve).collect();
    for p in &patients {
        let i = p.index;
        let r = h(seed, i, 100);
        let day = |salt: u64| today - Duration::days((h(seed, i, salt) % 330) as i64);
        let vc = p.listed_at().unwrap_or(VC_UNITS[0]).to_string();
        let rehab = REHAB_UNITS[(r % 4) as usize].to_string();
        let visit = |date: NaiveDate, unit: &str, prof: &str, dx: &str, acts: &[&str]| VisitSpec {
            date,
            unit: unit.to_string(),
            profession: prof.to_string(),
            phone: false,
            diagnoses: vec![dx.to_string()],
            activities: acts.iter().map(|a| Code::new(LOCAL_TERMS, a)).collect(),
            observations: vec![],
        };
        // Long-term pain: R52.2A–C, at the vårdcentral and/or a rehab unit.
        if r % 25 == 0 {
            let dx = ["R52.2A", "R52.2B", "R52.2C"][(r / 25 % 3) as usize];
            pop.add_visit(i, visit(day(101), &vc, profession::PHYSICIAN, dx, &[]))?;
            added += 1;
            if r % 2 == 0 {
                pop.add_visit(i, visit(day(102), &rehab, profession::PHYSIOTHERAPIST, dx, &[]))?;
                added += 1;
            }
        }
        // New dementia (age ≥ 70): diagnosed at the vårdcentral, then the occupational therapist
        // at a rehab unit assesses and/or prescribes cognitive aids (or nothing).
        if p.age_at(today) >= 70 && h(seed, i, 110) % 20 == 0 {
            let d0 = day(111);
            let dx = if r % 3 == 0 { "F00.1" } else { "F03.9" };
            pop.add_visit(i, visit(d0, &vc, profession::PHYSICIAN, dx, &[]))?;
            added += 1;
            let acts: Vec<&str> = match r % 4 {
                0 => vec![act::DEMENTIA_OT_ASSESSMENT],
                1 => vec![act::DEMENTIA_OT_ASSESSMENT, act::COGNITIVE_AIDS],
                2 => vec![act::COGNITIVE_AIDS],
                _ => vec![],
            };
            let later = (d0 + Duration::days(14)).min(today);
            pop.add_visit(i, visit(later, &rehab, profession::OCCUPATIONAL_THERAPIST, dx, &acts))?;
            added += 1;
        }
        // Incontinence work-up at the vårdcentral for some incontinence patients.
        let inc = p.diagnoses.iter().find(|d| d.code.starts_with("N39") || d.code.starts_with("R32"));
        if let Some(d) = inc {
            if h(seed, i, 120) % 2 == 0 {
                let date = (d.date + Duration::days(7)).min(today);
                pop.add_visit(i, visit(date, &vc, profession::NURSE, &d.code, &[act::INCONTINENCE_WORKUP]))?;
                added += 1;
            }
        }
    }
    Ok(added)
}

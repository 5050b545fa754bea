//! The configuration's status for the admin pages: how many code lists are verified, which rule
//! sets are not, which indicators cannot be computed — per connector, in Swedish. The overview
//! shows one panel with the totals; the settings page shows the details grouped by connector.
//! Built from the loaded rule sets' structure (never from the English `config check` texts, which
//! stay for the command line and the logs).

use crate::registers::pvk::rules::{CodeSetKind, IndicatorKind, Variant};
use crate::registers::pvk::PvkEngine;

#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct CodeListStatus {
    pub rule_year: i32,
    pub name: String,
    /// "diagnoser", "åtgärder", "observationer", "läkemedel".
    pub kind: &'static str,
    pub codes: usize,
    pub verified: bool,
    /// The rule file the list lives in (where to verify or fill it in).
    pub file: String,
}

#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct IndicatorStatus {
    pub rule_year: i32,
    pub name: String,
    /// What it lacks, in Swedish; empty when it can be computed.
    pub lacks: Vec<String>,
    pub regional: bool,
}

/// One connector's status.
#[derive(Clone, Debug, serde::Serialize, PartialEq, Eq)]
pub struct ConnectorStatus {
    pub connector: String,
    pub register: String,
    pub code_lists: Vec<CodeListStatus>,
    /// (rule year, verified against the register's definitions).
    pub rule_sets: Vec<(i32, bool)>,
    pub indicators: Vec<IndicatorStatus>,
    /// Other remarks from loading the configuration (counted here; `config check` lists them).
    pub other_remarks: usize,
}

impl ConnectorStatus {
    pub fn code_lists_verified(&self) -> usize {
        self.code_lists.iter().filter(|c| c.verified).count()
    }
    pub fn indicators_computable(&self) -> usize {
        self.indicators.iter().filter(|i| i.lacks.is_empty()).count()
    }
    /// Whether anything needs attention.
    pub fn needs_attention(&self) -> bool {
        self.code_lists_verified() < self.code_lists.len() || self.rule_sets.iter().any(|r| !r.1) || self.indicators_computable() < self.indicators.len() || self.other_remarks > 0
    }

    /// A SAR (or any non-PVK) connector: only the count of remarks from loading its mapping.
    pub fn remarks_only(connector: &str, register: &str, remarks: usize) -> ConnectorStatus {
        ConnectorStatus { connector: connector.into(), register: register.into(), code_lists: vec![], rule_sets: vec![], indicators: vec![], other_remarks: remarks }
    }

    pub fn from_pvk(engine: &PvkEngine, register: &str) -> ConnectorStatus {
        let mut code_lists = vec![];
        let mut rule_sets = vec![];
        for rs in &engine.rule_sets {
            rule_sets.push((rs.year, rs.verified));
            let file = rs.file.file_name().map(|f| f.to_string_lossy().to_string()).unwrap_or_default();
            for c in &rs.code_sets {
                code_lists.push(CodeListStatus { rule_year: rs.year, name: c.name.clone(), kind: kind_sv(c.kind), codes: c.codes.len(), verified: c.verified, file: file.clone() });
            }
        }
        let mut indicators = vec![];
        for rs in &engine.rule_sets {
            for ind in &rs.indicators {
                let mut lacks = vec![];
                if ind.definition_missing.is_some() {
                    lacks.push("SKR:s definition är inte offentlig".to_string());
                }
                let lists = rs.missing_code_lists(ind);
                if !lists.is_empty() {
                    lacks.push(format!("tom kodlista ({})", lists.join(", ")));
                }
                if ind.variant == Variant::Vardcentral && engine.options.listing.is_none() {
                    lacks.push("listningsdata saknas".into());
                }
                if ind.population.drugs.is_some() && engine.options.drug_list.is_none() {
                    lacks.push("läkemedelsdata saknas".into());
                }
                if ind.kind == IndicatorKind::PerFte && engine.options.fte.is_empty() {
                    lacks.push("årsarbetskrafter saknas".into());
                }
                indicators.push(IndicatorStatus { rule_year: rs.year, name: ind.display_name(), lacks, regional: ind.regional });
            }
        }
        // Warnings other than the unverified lists and rule sets counted above.
        let other_remarks = engine.warnings.iter().filter(|w| !w.key.starts_with("code_sets.") && w.key != "rule_set.verified").count();
        ConnectorStatus { connector: engine.connector.clone(), register: register.into(), code_lists, rule_sets, indicators, other_remarks }
    }
}

fn kind_sv(k: CodeSetKind) -> &'static str {
    match k {
        CodeSetKind::Diagnosis => "diagnoser",
        CodeSetKind::Activity => "åtgärder",
        CodeSetKind::Observation => "observationer",
        CodeSetKind::Drug => "läkemedel",
    }
}

/// The overview's one line: "3 av 17 kodlistor verifierade · 12 av 40 indikatorer beräkningsbara".
pub fn summary_sv(all: &[ConnectorStatus]) -> Option<String> {
    if all.iter().all(|c| !c.needs_attention()) {
        return None;
    }
    let mut parts = vec![];
    let lists: usize = all.iter().map(|c| c.code_lists.len()).sum();
    if lists > 0 {
        parts.push(format!("{} av {lists} kodlistor verifierade", all.iter().map(|c| c.code_lists_verified()).sum::<usize>()));
    }
    let inds: usize = all.iter().map(|c| c.indicators.len()).sum();
    if inds > 0 {
        parts.push(format!("{} av {inds} indikatorer beräkningsbara", all.iter().map(|c| c.indicators_computable()).sum::<usize>()));
    }
    let unverified_sets: usize = all.iter().map(|c| c.rule_sets.iter().filter(|r| !r.1).count()).sum();
    if unverified_sets > 0 {
        parts.push(format!("{unverified_sets} regeluppsättning{} inte verifierad{}", if unverified_sets == 1 { "" } else { "ar" }, if unverified_sets == 1 { "" } else { "e" }));
    }
    let other: usize = all.iter().map(|c| c.other_remarks).sum();
    if other > 0 {
        parts.push(format!("{other} övriga anmärkningar i konfigurationen"));
    }
    Some(parts.join(" · "))
}

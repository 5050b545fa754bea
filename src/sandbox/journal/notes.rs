//! Keyword notes (GetCareDocumentation 2.1): the same answers the journal serves as structured
//! observations, written the way a Cosmic keyword template shows them in a note's text
//! (`clinicalDocumentNoteText`), one `Heading: value` line per keyword.
//!
//! The headings and answers come from the shipped keyword table
//! (`connectors/artrosregistret/keywords.toml`), read as data, with deliberate variation: every
//! spelling of a heading, upper and lower case, extra spaces around the colon, a unit written
//! after some numbers, decimal commas, and free-text lines that are not keywords. A note holds the
//! answers documented at one visit; answers nullified, or changed after the visit, are in a note
//! of their own (a nullified note nullifies its keywords). An observation the structured contract
//! writes deliberately bad (unknown code system) is written as an unreadable keyword instead: a
//! value not allowed, two different values, or text that is not a number — so both routes refuse
//! the same answers.

use super::population::{mix, Plan};
use super::truth::Defect;
use super::xml::{close, el, el_with, open, ts_el, Ctx};
use super::AnswerValue;
use crate::sandbox::vocabulary::SOURCE_SYSTEM;
use crate::sources::riv::keywords::{KeywordDef, KeywordTable, ValueType};
use std::io::Write;
use std::sync::OnceLock;

/// The keyword table the sandbox writes its notes with: the one shipped for its region.
pub fn keyword_table() -> &'static KeywordTable {
    static TABLE: OnceLock<KeywordTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        KeywordTable::parse(include_str!("../../../connectors/artrosregistret/keywords.toml")).expect("the shipped keyword table is valid")
    })
}

/// How a deliberately bad answer is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Breakage {
    /// A coded keyword's answer that the table does not allow ("Vet ej").
    UnknownValue,
    /// The keyword twice in the note, with different values.
    TwoValues,
    /// A quantity written as words ("ungefär sex").
    NotANumber,
}

/// The breakage of a bad observation (by patient and index, so it is fixed per document).
pub fn breakage(k: &KeywordDef, patient: u32, obs_index: u32) -> Breakage {
    match (k.value_type, mix(patient as u64, obs_index as u64 ^ 0xb4d) % 2) {
        (_, 0) => Breakage::TwoValues,
        (ValueType::Code, _) => Breakage::UnknownValue,
        (ValueType::Quantity, _) => Breakage::NotANumber,
    }
}

/// The notes of a plan: per contact, the observations `ok` selects, one note per (nullified,
/// registration time), and a new note whenever a term would repeat in one.
pub(crate) fn select_notes(plan: &Plan, ok: impl Fn(u32) -> bool) -> Vec<(u32, Vec<u32>)> {
    let mut notes: Vec<(u32, bool, Option<chrono::NaiveDateTime>, Vec<u32>)> = vec![];
    for (i, o) in plan.observations.iter().enumerate() {
        let i = i as u32;
        if !ok(i) {
            continue;
        }
        let fits = |n: &&mut (u32, bool, Option<chrono::NaiveDateTime>, Vec<u32>)| {
            n.0 == o.contact && n.1 == o.nullified && n.2 == o.registered && !n.3.iter().any(|j| plan.observations[*j as usize].term == o.term)
        };
        match notes.iter_mut().find(|n| fits(n)) {
            Some(n) => n.3.push(i),
            None => notes.push((o.contact, o.nullified, o.registered, vec![i])),
        }
    }
    notes.into_iter().map(|(c, _, _, v)| (c, v)).collect()
}

/// A number as a Swedish note writes it: decimal comma, no trailing zeros.
fn swedish_number(v: f64) -> String {
    format!("{v}").replace('.', ",")
}

/// A heading as a template writes it, varied by `h`.
fn heading(k: &KeywordDef, h: u64) -> String {
    let base = &k.headings[(h % k.headings.len() as u64) as usize];
    match (h >> 8) % 5 {
        0 => base.to_uppercase(),
        1 => base.to_lowercase(),
        _ => base.clone(),
    }
}

/// The text an answer is written with (the table's first spelling of the code, sorted, so it is
/// fixed), varied by `h`.
fn answer_text(k: &KeywordDef, v: &AnswerValue, h: u64) -> Option<String> {
    match (k.value_type, v) {
        (ValueType::Quantity, AnswerValue::Quantity(x)) => {
            let mut s = swedish_number(*x);
            if (h >> 16) % 3 == 0 {
                if let Some(u) = k.unit_text.first() {
                    s = format!("{s} {u}");
                }
            }
            Some(s)
        }
        (ValueType::Code, AnswerValue::Code(code)) => {
            let mut written: Vec<&String> = k.values.iter().filter(|(_, c)| *c == code.as_ref()).map(|(w, _)| w).collect();
            written.sort();
            let w = written.get((h >> 24) as usize % written.len().max(1))?;
            Some(if (h >> 32) % 4 == 0 { w.to_lowercase() } else { w.to_string() })
        }
        _ => None,
    }
}

/// Another value of the keyword than `v` (for a note that gives two).
fn other_value(k: &KeywordDef, v: &AnswerValue) -> String {
    match v {
        AnswerValue::Quantity(x) => swedish_number(x + 1.0),
        AnswerValue::Code(code) => {
            let mut others: Vec<&String> = k.values.iter().filter(|(_, c)| *c != code.as_ref()).map(|(w, _)| w).collect();
            others.sort();
            others.first().map(|s| s.to_string()).unwrap_or_else(|| "Vet ej".into())
        }
    }
}

/// The note's text: a title line, the keywords, and now and then a free-text line.
pub(crate) fn note_text(plan: &Plan, patient: u32, idx: &[u32]) -> String {
    let table = keyword_table();
    let mut t = String::from("Fysioterapeutisk bedömning\n");
    if mix(patient as u64, idx[0] as u64) % 3 == 0 {
        t.push_str("Anamnes: Besvär vid belastning sedan en tid. Se även tidigare anteckning.\n");
    }
    for &i in idx {
        let o = &plan.observations[i as usize];
        let Some(k) = table.by_term(&o.term) else {
            // A term without a keyword cannot be written as one; the sandbox's table has them all.
            continue;
        };
        let h = mix(mix(patient as u64, i as u64), 0x4b57);
        let head = heading(k, h);
        let colon = if (h >> 40) % 3 == 0 { "  :   " } else { ": " };
        let value = answer_text(k, &o.value, h).unwrap_or_else(|| "?".into());
        if o.defect == Some(Defect::UnknownCodeSystem) {
            match breakage(k, patient, i) {
                Breakage::TwoValues => {
                    let _ = writeln!(t, "{head}{colon}{value}");
                    let _ = writeln!(t, "{head}: {}", other_value(k, &o.value));
                }
                Breakage::UnknownValue => {
                    let _ = writeln!(t, "{head}{colon}Vet ej");
                }
                Breakage::NotANumber => {
                    let _ = writeln!(t, "{head}{colon}ungefär sex");
                }
            }
            continue;
        }
        let _ = writeln!(t, "{head}{colon}{value}");
    }
    t.push_str("Planering: Fortsatt träning enligt plan.\n");
    t
}

use std::fmt::Write as _;

impl Ctx<'_> {
    /// One keyword note: a `careDocumentation` with the observations `idx` of contact `ci`.
    pub(super) fn care_documentation(&self, w: &mut Vec<u8>, ci: u32, idx: &[u32]) {
        let c = &self.plan.contacts[ci as usize];
        let first = &self.plan.observations[idx[0] as usize];
        open(w, "tns:careDocumentation");
        open(w, "careDocumentationHeader");
        el_with(w, "documentId", |w| write!(w, "{}-N{}-{}", self.pop.tag(), self.p, idx[0]).expect("write to Vec"));
        el(w, "sourceSystemHSAid", SOURCE_SYSTEM);
        el(w, "documentTitle", "Sökordsanteckning fysioterapi");
        // The note documents the visit: its time is the visit's.
        ts_el(w, "documentTime", c.start);
        open(w, "patientId");
        el_with(w, "id", |w| self.patient_id(w, false));
        el(w, "type", self.id_type());
        close(w, "patientId");
        self.professional(w, c);
        el(w, "approvedForPatient", "true");
        el_with(w, "careContactId", |w| self.care_contact_id(w, ci));
        el(w, "nullified", if first.nullified { "true" } else { "false" });
        if first.nullified {
            el(w, "nullifiedReason", "Felregistrerad");
        }
        close(w, "careDocumentationHeader");
        open(w, "careDocumentationBody");
        open(w, "clinicalDocumentNote");
        el(w, "clinicalDocumentNoteCode", "utr");
        el(w, "clinicalDocumentTypeCode", "ova");
        el(w, "clinicalDocumentNoteTitle", "Fysioterapi");
        el(w, "clinicalDocumentNoteText", &note_text(self.plan, self.p, idx));
        close(w, "clinicalDocumentNote");
        close(w, "careDocumentationBody");
        close(w, "tns:careDocumentation");
    }
}

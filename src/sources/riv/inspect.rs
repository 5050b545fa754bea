//! `registerbrygga inspect FILE`: parse a RIV-TA response document (SOAP envelope or bare
//! response element) and show the canonical records and, kept apart, the refused items.
//! A GetCareDocumentation document is read with a keyword table (`--keywords`): the report
//! lists, per note, the keywords found (as observations) and the keywords refused with reasons.
//! Exit code 0 when something was accepted (or the document was valid and empty), 1 when the
//! whole document or every item in it was refused.
//!
//! Patients appear as keyed pseudonyms, the form logs, the audit log and the admin pages use
//! ([`crate::crypto::Pseudonymizer`]): with the configured `security.pseudonym_key` when it can be
//! read, so a pseudonym can be looked up there; otherwise with a key made for this run only
//! (the same patient has the same pseudonym within the report). Identities are printed only
//! when asked for explicitly ([`PatientView::with_identities`], `inspect --show-identities`).

use super::parse::{parse_response, ParseContext, Parsed};
use crate::crypto::Pseudonymizer;
use crate::model::{PatientId, Record};
use crate::table::Table;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// How the report shows patients.
#[derive(Clone, Debug)]
pub struct PatientView {
    pseudo: Pseudonymizer,
    /// The pseudonyms are the configured ones (comparable with logs and the admin pages).
    configured: bool,
    identities: bool,
}

impl PatientView {
    /// Pseudonyms under the region's configured key.
    pub fn configured(pseudo: Pseudonymizer) -> PatientView {
        PatientView { pseudo, configured: true, identities: false }
    }

    /// Pseudonyms under a random key made for this report only.
    pub fn one_off() -> PatientView {
        use rand::RngCore;
        let mut k = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut k);
        PatientView { pseudo: Pseudonymizer::new(k), configured: false, identities: false }
    }

    /// Also show each patient's identity (personnummer, samordningsnummer or reserve number).
    pub fn with_identities(mut self) -> PatientView {
        self.identities = true;
        self
    }

    fn show(&self, id: &PatientId) -> serde_json::Value {
        serde_json::json!({
            "kind": id.kind(),
            "pseudonym": self.pseudo.patient_key(id),
            "id": if self.identities { id.raw() } else { "<redacted>" },
        })
    }

    fn describe(&self) -> &'static str {
        match (self.identities, self.configured) {
            (true, _) => "identities shown (--show-identities): personal data, keep this output local",
            (false, true) => "pseudonyms under the configured security.pseudonym_key",
            (false, false) => "pseudonyms under a key made for this run (no readable security.pseudonym_key)",
        }
    }
}

pub fn run(file: &Path, json: bool) -> Result<i32> {
    run_with(file, json, None)
}

/// As [`run`], reading keyword notes with the keyword table at `keywords`.
pub fn run_with(file: &Path, json: bool, keywords: Option<&Path>) -> Result<i32> {
    run_as(file, json, keywords, &PatientView::one_off())
}

/// As [`run_with`], showing patients as `patients` says.
pub fn run_as(file: &Path, json: bool, keywords: Option<&Path>, patients: &PatientView) -> Result<i32> {
    let file = file.to_path_buf();
    let table = keywords.map(super::keywords::KeywordTable::load).transpose()?.map(std::sync::Arc::new);
    // The CLI calls this from inside its runtime; parse on a thread of our own so the file can be
    // streamed asynchronously whatever runtime (if any) the caller has.
    let handle = std::thread::spawn(move || -> Result<(String, Result<Parsed, super::DocumentError>)> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        rt.block_on(async {
            let f = tokio::fs::File::open(&file).await.with_context(|| format!("cannot open {}", file.display()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| file.display().to_string());
            let today = chrono::Utc::now().with_timezone(&chrono_tz::Europe::Stockholm).date_naive();
            let mut ctx = ParseContext::new("inspect", today);
            ctx.keywords = table;
            let parsed = parse_response(tokio::io::BufReader::new(f), &name, &ctx).await;
            Ok((name, parsed))
        })
    });
    let (name, parsed) = handle.join().map_err(|_| anyhow!("the parser thread failed"))??;
    let (value, code) = report_as(&name, &parsed, patients);
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_human(&value);
    }
    Ok(code)
}

/// The JSON report and the exit code for a parse outcome (patients as one-off pseudonyms).
pub fn report(name: &str, parsed: &Result<Parsed, super::DocumentError>) -> (serde_json::Value, i32) {
    report_as(name, parsed, &PatientView::one_off())
}

/// As [`report`], showing patients as `patients` says.
pub fn report_as(name: &str, parsed: &Result<Parsed, super::DocumentError>, patients: &PatientView) -> (serde_json::Value, i32) {
    match parsed {
        Ok(p) => {
            let records: Vec<serde_json::Value> = p.records.iter().map(|r| shown_record(r, patients)).collect();
            let residents: Vec<serde_json::Value> = p.residents.iter().map(|r| serde_json::json!({ "patient": patients.show(&r.patient), "engagements": r.engagements })).collect();
            let accepted = !p.records.is_empty() || !p.residents.is_empty();
            let code = if accepted || p.refused.is_empty() { 0 } else { 1 };
            let mut v = serde_json::json!({
                "document": name,
                "patients_shown_as": patients.describe(),
                "contract": p.contract.label(),
                "records": records,
                "refused": p.refused,
                "outside_units": p.outside_units,
            });
            if let Some(r) = &p.result {
                v["result"] = serde_json::json!(r);
            }
            if p.contract == super::Contract::GetCareDocumentation {
                // Keywords found (observations from notes) and refused, by keyword.
                let found: Vec<serde_json::Value> = p
                    .records
                    .iter()
                    .filter_map(|r| match r {
                        Record::Observation(o) => Some(serde_json::json!({ "note": o.provenance.document_id.split('#').next(), "term": o.term.code })),
                        _ => None,
                    })
                    .collect();
                let refused: Vec<&str> = p.refused.iter().filter(|r| r.reason.starts_with("keyword ")).map(|r| r.reason.as_str()).collect();
                v["keywords"] = serde_json::json!({ "found": found, "refused": refused });
            }
            if !residents.is_empty() || p.updates.is_some() {
                v["residents"] = serde_json::json!(residents);
                v["response_is_complete"] = serde_json::json!(p.updates.as_ref().map(|u| u.complete));
            }
            (v, code)
        }
        Err(e) => (
            serde_json::json!({
                "document": name,
                "records": [],
                "refused": [e.refusal],
                "transient": e.transient,
            }),
            1,
        ),
    }
}

/// A record as JSON with the patient shown as `patients` says (by default: kind and pseudonym).
fn shown_record(r: &Record, patients: &PatientView) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("patient".into(), patients.show(r.patient()));
    }
    v
}

/// An observation's value in a cell: `12 mm`, `system|code`, a date or a period, or the text.
fn value_cell(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().map(str::to_string).or_else(|| v[k].as_f64().map(|n| n.to_string())).unwrap_or_default();
    match v["type"].as_str() {
        Some("quantity") => format!("{} {}", s("value"), s("unit")).trim().to_string(),
        Some("code") => format!("{}|{}", v["code"]["system"].as_str().unwrap_or(""), v["code"]["code"].as_str().unwrap_or("")),
        Some("period") => format!("{}–{}", s("start"), s("end")),
        Some(_) => s("value"),
        None => String::new(),
    }
}

/// A patient cell: the identity when shown, else the pseudonym.
fn patient_cell(p: &serde_json::Value) -> String {
    match p["id"].as_str() {
        Some(id) if id != "<redacted>" => id.to_string(),
        _ => p["pseudonym"].as_str().unwrap_or("-").to_string(),
    }
}

fn print_human(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| match v {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(x) => x.clone(),
        other => other.to_string(),
    };
    println!("document: {}", s(&v["document"]));
    if let Some(c) = v.get("contract") {
        println!("contract: {}", s(c));
    }
    if let Some(r) = v.get("result") {
        // The producer's result: its code, then whatever else it said (log id, message).
        let extra: Vec<String> = ["sub_code", "error_code", "message", "log_id"]
            .iter()
            .filter_map(|k| r.get(*k).filter(|x| !x.is_null()).map(|x| format!("{} {}", k.replace('_', " "), s(x))))
            .collect();
        println!("result:   {}{}", s(&r["code"]), if extra.is_empty() { String::new() } else { format!(" ({})", extra.join(", ")) });
    }
    if let Some(p) = v.get("patients_shown_as") {
        println!("patients: {}", s(p));
    }
    let records = v["records"].as_array().cloned().unwrap_or_default();
    println!("\nrecords ({}):", records.len());
    if !records.is_empty() {
        let mut t = Table::new(&["kind", "patient", "document", "time", "code", "unit", "value"]);
        for r in &records {
            let time = r.get("start").or_else(|| r.get("time")).map(|x| s(x)).unwrap_or_default();
            let code = r.get("code").or_else(|| r.get("term")).or_else(|| r.get("contact_type"));
            let code = code.filter(|c| !c.is_null()).map(|c| format!("{}|{}", s(&c["system"]), s(&c["code"]))).unwrap_or_default();
            let mut value = value_cell(&r["value"]);
            if r["nullified"].as_bool() == Some(true) {
                value = format!("{value} NULLIFIED").trim().to_string();
            }
            t.row([s(&r["record"]), patient_cell(&r["patient"]), s(&r["provenance"]["document_id"]), time, code, r.get("unit").map(|x| s(x)).unwrap_or_default(), value]);
        }
        println!("{}", t.render(2));
    }
    if let Some(k) = v.get("keywords") {
        let found = k["found"].as_array().map(Vec::len).unwrap_or(0);
        let refused = k["refused"].as_array().map(Vec::len).unwrap_or(0);
        println!("\nkeywords: {found} found, {refused} refused");
    }
    if let Some(res) = v.get("residents").and_then(|r| r.as_array()) {
        println!("\nresidents ({}), response complete: {}", res.len(), s(&v["response_is_complete"]));
        if !res.is_empty() {
            let mut t = Table::new(&["patient", "kind", ">engagements"]);
            for r in res {
                t.row([patient_cell(&r["patient"]), s(&r["patient"]["kind"]), r["engagements"].as_array().map_or(0, Vec::len).to_string()]);
            }
            println!("{}", t.render(2));
        }
    }
    let refused = v["refused"].as_array().cloned().unwrap_or_default();
    println!("\nrefused ({}):", refused.len());
    if !refused.is_empty() {
        let mut t = Table::new(&["document", "field", "reason"]);
        for r in &refused {
            t.row([s(&r["document"]), s(&r["field"]), s(&r["reason"])]);
        }
        println!("{}", t.render(2));
    }
    if let Some(n) = v.get("outside_units").and_then(|n| n.as_u64()).filter(|n| *n > 0) {
        println!("\n{n} record(s) outside the configured units left out");
    }
}

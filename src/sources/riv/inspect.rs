//! `registerbrygga inspect FILE`: parse a RIV-TA response document (SOAP envelope or bare
//! response element) and show the canonical records and, kept apart, the refused items.
//! A GetCareDocumentation document is read with a keyword table (`--keywords`): the report
//! lists, per note, the keywords found (as observations) and the keywords refused with reasons.
//! Exit code 0 when something was accepted (or the document was valid and empty), 1 when the
//! whole document or every item in it was refused. Patient identities are never printed.

use super::parse::{parse_response, ParseContext, Parsed};
use crate::model::Record;
use anyhow::{anyhow, Context, Result};
use std::path::Path;

pub fn run(file: &Path, json: bool) -> Result<i32> {
    run_with(file, json, None)
}

/// As [`run`], reading keyword notes with the keyword table at `keywords`.
pub fn run_with(file: &Path, json: bool, keywords: Option<&Path>) -> Result<i32> {
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
    let (value, code) = report(&name, &parsed);
    if json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_human(&value);
    }
    Ok(code)
}

/// The JSON report and the exit code for a parse outcome.
pub fn report(name: &str, parsed: &Result<Parsed, super::DocumentError>) -> (serde_json::Value, i32) {
    match parsed {
        Ok(p) => {
            let records: Vec<serde_json::Value> = p.records.iter().map(redacted_record).collect();
            let residents: Vec<serde_json::Value> = p
                .residents
                .iter()
                .map(|r| serde_json::json!({ "patient": { "kind": r.patient.kind(), "id": "<redacted>" }, "engagements": r.engagements }))
                .collect();
            let accepted = !p.records.is_empty() || !p.residents.is_empty();
            let code = if accepted || p.refused.is_empty() { 0 } else { 1 };
            let mut v = serde_json::json!({
                "document": name,
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

/// A record as JSON with the patient identity replaced by its kind.
fn redacted_record(r: &Record) -> serde_json::Value {
    let mut v = serde_json::to_value(r).unwrap_or(serde_json::Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("patient".into(), serde_json::json!({ "kind": r.patient().kind(), "id": "<redacted>" }));
    }
    v
}

fn print_human(v: &serde_json::Value) {
    let s = |v: &serde_json::Value| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
    println!("document: {}", s(&v["document"]));
    if let Some(c) = v.get("contract") {
        println!("contract: {}", s(c));
    }
    if let Some(r) = v.get("result") {
        println!("result:   {}", r);
    }
    let records = v["records"].as_array().cloned().unwrap_or_default();
    println!("\nrecords ({}):", records.len());
    for r in &records {
        let kind = s(&r["kind"]);
        let doc = s(&r["provenance"]["document_id"]);
        let time = r.get("start").or_else(|| r.get("time")).map(s).unwrap_or_default();
        let code = r.get("code").or_else(|| r.get("term")).or_else(|| r.get("contact_type"));
        let code = code.map(|c| format!("{}|{}", s(&c["system"]), s(&c["code"]))).unwrap_or_default();
        let unit = r.get("unit").map(s).unwrap_or_default();
        let nullified = if r["nullified"].as_bool() == Some(true) { " NULLIFIED" } else { "" };
        println!("  {kind:<12} {doc:<24} {time:<26} {code:<36} unit {unit}{nullified}");
        if let Some(val) = r.get("value").filter(|v| !v.is_null()) {
            println!("               value {val}");
        }
    }
    if let Some(k) = v.get("keywords") {
        let found = k["found"].as_array().map(Vec::len).unwrap_or(0);
        let refused = k["refused"].as_array().map(Vec::len).unwrap_or(0);
        println!("\nkeywords: {found} found, {refused} refused");
    }
    if let Some(res) = v.get("residents").and_then(|r| r.as_array()) {
        println!("\nresidents ({}), response complete: {}", res.len(), v["response_is_complete"]);
    }
    let refused = v["refused"].as_array().cloned().unwrap_or_default();
    println!("\nrefused ({}):", refused.len());
    for r in &refused {
        println!("  {}\n    field:  {}\n    reason: {}", s(&r["document"]), s(&r["field"]), s(&r["reason"]));
    }
    if let Some(n) = v.get("outside_units").and_then(|n| n.as_u64()).filter(|n| *n > 0) {
        println!("\n{n} record(s) outside the configured units left out");
    }
}

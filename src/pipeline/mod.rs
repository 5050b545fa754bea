//! One run of one connector: source → canonical records → mapper → outbox, in that direction.
//!
//! For each patient the source delivers, the run stores what changed (encrypted), maps the
//! patient's whole stored history with the connector's mapper, reconciles the result with what
//! the outbox already intends, and writes documents, outbox records, worklist entries and the
//! audit events that explain them in **one transaction**. The watermark moves only when the
//! pull was complete and the after-pull step (PVK) succeeded, in the run's last transaction. A run killed at any point is simply run
//! again: unchanged documents are recognised and change nothing.

pub mod register;

use crate::app::App;
use crate::audit::{kind, NewAuditEvent};
use crate::config::ConnectorDef;
use crate::model::{HsaId, Record};
use crate::outbox::{reconcile, Existing, Incomplete, RegisterIntent};
use crate::sources::{PullRequest, PullSummary, Source, SourceItem};
use crate::store::{ApplyOutcome, ChangeSet, DocumentUpsert, EpisodeRow, NewQuarantine};
use anyhow::{Context, Result};
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// What a per-patient mapper reads: one patient's journal, as the register engine defines it.
pub use crate::registers::engine::PatientInput;

/// What a per-patient mapper wants the register to hold.
#[derive(Clone, Debug, Default)]
pub struct MapOutput {
    pub intents: Vec<RegisterIntent>,
    pub incomplete: Vec<Incomplete>,
    pub episodes: Vec<EpisodeRow>,
    pub opted_out: bool,
    /// Remarks worth an audit event (no personal data), e.g. "reserve number: not sent".
    pub notes: Vec<String>,
}

/// A register mapper that works patient by patient (SAR).
pub trait PatientMapper: Send + Sync {
    fn map_patient(&self, input: &PatientInput<'_>) -> MapOutput;
}

/// Work after the pull (PVK: recompute indicators for the units and months from stored data).
#[async_trait]
pub trait AfterPull: Send + Sync {
    async fn after_pull(&self, app: &App, run: &RunInfo, dry_run: bool) -> Result<serde_json::Value>;
}

/// The connector as the daemon runs it.
#[derive(Clone)]
pub struct ConnectorRuntime {
    pub def: ConnectorDef,
    pub source: Arc<dyn Source>,
    pub mapper: Option<Arc<dyn PatientMapper>>,
    pub after: Option<Arc<dyn AfterPull>>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunKind {
    Scheduled { scheduled_for: DateTime<Utc> },
    Manual,
    Backfill { from: NaiveDate, to: NaiveDate },
}

impl RunKind {
    fn label(&self) -> &'static str {
        match self {
            RunKind::Scheduled { .. } => "scheduled",
            RunKind::Manual => "manual",
            RunKind::Backfill { .. } => "backfill",
        }
    }
}

#[derive(Clone, Debug)]
pub struct RunInfo {
    pub run_id: i64,
    pub connector: String,
    pub correlation_id: String,
    pub today: NaiveDate,
    pub window_from: NaiveDate,
    pub window_to: NaiveDate,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunReport {
    pub run_id: i64,
    pub connector: String,
    pub status: String,
    pub dry_run: bool,
    pub patients: u64,
    pub patients_unchanged: u64,
    pub documents_new: u64,
    pub documents_changed: u64,
    pub quarantined: u64,
    pub records_created: u64,
    pub records_updated: u64,
    pub records_retracted: u64,
    pub worklist_items: u64,
    pub opted_out: u64,
    pub complete: bool,
    pub after: serde_json::Value,
    /// What the source wants the operator to know (e.g. dropped files not settled yet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl RunReport {
    fn add(&mut self, o: &ApplyOutcome) {
        self.documents_new += o.documents_new as u64;
        self.documents_changed += o.documents_changed as u64;
        self.quarantined += o.quarantined as u64;
        self.records_created += o.outbox_created as u64;
        self.records_updated += o.outbox_updated as u64;
        self.records_retracted += o.outbox_retracted as u64;
    }
}

/// Progress callback (the backfill's progress bar): (patients done, patients known so far).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Run a connector once.
pub async fn run_connector(app: &App, rt: &ConnectorRuntime, kind: RunKind, dry_run: bool, today: NaiveDate, progress: Option<Progress>) -> Result<RunReport> {
    let def = &rt.def;
    let store = &app.store;
    let corr = crate::audit::correlation_id();
    let scheduled_for = if let RunKind::Scheduled { scheduled_for } = &kind { Some(*scheduled_for) } else { None };
    let run_id = if dry_run { 0 } else { store.start_run(&def.name, kind.label(), scheduled_for, &app.instance_id, &corr).await? };
    let units: Vec<HsaId> = def.units.iter().filter_map(|u| HsaId::parse(u).ok()).collect();

    // Window: a backfill re-reads its period; a regular run asks for patients changed since the
    // oldest unit watermark minus the overlap, and re-reads their recent history.
    let (changed_since, window_from, window_to) = match &kind {
        RunKind::Backfill { from, to } => (None, *from, *to),
        _ => {
            let mut oldest: Option<DateTime<Utc>> = None;
            let mut missing = false;
            for u in &def.units {
                match store.watermark(&def.name, u).await? {
                    Some(w) => oldest = Some(oldest.map_or(w, |o| o.min(w))),
                    None => missing = true,
                }
            }
            let since = if missing {
                Some(Utc::now() - chrono::Duration::days(def.window.initial_days as i64))
            } else {
                oldest.map(|w| w - chrono::Duration::hours(def.window.overlap_hours as i64))
            };
            (since, today - chrono::Duration::days(def.window.history_days as i64), today)
        }
    };
    let info = RunInfo { run_id, connector: def.name.clone(), correlation_id: corr.clone(), today, window_from, window_to };
    let req = PullRequest {
        connector: def.name.clone(),
        units: units.clone(),
        changed_since,
        window_from,
        window_to,
        discovery: def.patients.clone(),
        connector_dir: def.dir.clone(),
        correlation_id: corr.clone(),
        today,
    };
    let pull_started = Utc::now();
    let (tx, mut rx) = mpsc::channel::<SourceItem>(64);
    let source = rt.source.clone();
    let pull = tokio::spawn(async move { source.pull(&req, tx).await });

    let mut report = RunReport { run_id, connector: def.name.clone(), dry_run, ..Default::default() };
    let mut failure: Option<String> = None;
    // Patients are written in groups: whatever has arrived (up to PATIENTS_PER_TRANSACTION) is
    // read from the store with one query and written in one transaction. Each patient's changes
    // are complete in themselves, so a crash between groups loses nothing.
    while let Some(first) = rx.recv().await {
        let mut items = vec![first];
        while items.len() < PATIENTS_PER_TRANSACTION {
            match rx.try_recv() {
                Ok(i) => items.push(i),
                Err(_) => break,
            }
        }
        if let Err(e) = handle_items(app, rt, &info, items, dry_run, &mut report).await {
            // A store failure is not bad input: stop the run, keep the watermark.
            failure = Some(format!("{e:#}"));
            break;
        }
        if let Some(p) = &progress {
            p(report.patients);
        }
    }
    drop(rx);
    let summary: PullSummary = match pull.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            failure.get_or_insert_with(|| format!("source failed: {e:#}"));
            PullSummary::default()
        }
        Err(e) => {
            failure.get_or_insert_with(|| format!("source task failed: {e}"));
            PullSummary::default()
        }
    };
    report.warnings = summary.warnings.clone();
    for w in &report.warnings {
        tracing::warn!(connector = %def.name, "{w}");
    }

    if failure.is_none() {
        if let Some(after) = &rt.after {
            match after.after_pull(app, &info, dry_run).await {
                Ok(v) => report.after = v,
                Err(e) => failure = Some(format!("after-pull step failed: {e:#}")),
            }
        }
    }
    // Complete only if the pull missed nothing and every step after it succeeded: a failed
    // after-pull step (PVK) leaves the watermark where it was, so the next run does it again.
    report.complete = summary.complete && failure.is_none();
    if dry_run {
        report.status = if failure.is_some() { "failed".into() } else { "dry-run".into() };
        return Ok(report);
    }
    // The watermark moves to the moment this pull began, only if nothing was missed.
    if report.complete {
        let mark = summary.started_at.unwrap_or(pull_started);
        let mut cs = ChangeSet::default();
        for u in &def.units {
            cs.watermarks.push((def.name.clone(), u.clone(), mark));
        }
        store.apply(cs).await?;
        if let Err(e) = rt.source.commit(&summary).await {
            tracing::warn!(connector = %def.name, error = %e, "source commit failed");
        }
    }
    report.status = match (&failure, report.complete) {
        (Some(_), _) => "failed".into(),
        (None, true) => "ok".into(),
        (None, false) => "partial".into(),
    };
    let stats = serde_json::to_value(&report)?;
    store.finish_run(run_id, &report.status, &stats, failure.as_deref()).await?;
    if let Some(f) = failure {
        tracing::warn!(connector = %def.name, run = run_id, "run failed: {f}");
    }
    Ok(report)
}

/// Largest group of patients written in one transaction.
const PATIENTS_PER_TRANSACTION: usize = 64;

async fn handle_items(app: &App, rt: &ConnectorRuntime, info: &RunInfo, items: Vec<SourceItem>, dry_run: bool, report: &mut RunReport) -> Result<()> {
    let store = &app.store;
    let connector = &rt.def.name;
    let run_id = (info.run_id > 0).then_some(info.run_id);
    let keys: Vec<String> = items
        .iter()
        .filter_map(|i| match i {
            SourceItem::Patient(b) => Some(app.pseudo.patient_key(&b.patient)),
            _ => None,
        })
        .collect();
    let mut stored_hashes = store.document_hashes_many(connector, &keys).await?;
    let mut cs = ChangeSet::default();
    for item in items {
        match item {
            SourceItem::Refused { refusal, patient, raw, transient } => {
                let pk = patient.as_ref().map(|p| app.pseudo.patient_key(p));
                cs.quarantine.push(NewQuarantine {
                    connector: connector.clone(),
                    run_id,
                    document: refusal.document.clone(),
                    field: refusal.field.clone(),
                    reason: refusal.reason.clone(),
                    patient_key: pk.clone(),
                    raw,
                });
                cs.audit.push(NewAuditEvent::system(
                    if transient { kind::SOURCE_ERROR } else { kind::QUARANTINED },
                    &info.correlation_id,
                    connector,
                    serde_json::json!({"document": refusal.document, "field": refusal.field, "reason": refusal.reason, "patient": pk, "transient": transient}),
                ));
            }
            SourceItem::Patient(batch) => {
                report.patients += 1;
                let pk = app.pseudo.patient_key(&batch.patient);
                let stored = stored_hashes.remove(&pk);
                // The content hash is computed once here and handed to the store.
                let changed: Vec<(Record, String)> = batch
                    .records
                    .into_iter()
                    .map(|r| {
                        let h = r.content_hash();
                        (r, h)
                    })
                    .filter(|(r, h)| stored.as_ref().and_then(|s| s.get(&r.key())).map(|old| old != h).unwrap_or(true))
                    .collect();
                if changed.is_empty() && batch.refusals.is_empty() {
                    report.patients_unchanged += 1;
                    continue;
                }
                for r in &batch.refusals {
                    cs.quarantine.push(NewQuarantine {
                        connector: connector.clone(),
                        run_id,
                        document: r.document.clone(),
                        field: r.field.clone(),
                        reason: r.reason.clone(),
                        patient_key: Some(pk.clone()),
                        raw: None,
                    });
                    cs.audit.push(NewAuditEvent::system(
                        kind::QUARANTINED,
                        &info.correlation_id,
                        connector,
                        serde_json::json!({"document": r.document, "field": r.field, "reason": r.reason, "patient": pk}),
                    ));
                }
                if !changed.is_empty() {
                    cs.audit.push(NewAuditEvent::system(
                        kind::DOCUMENTS_FETCHED,
                        &info.correlation_id,
                        connector,
                        serde_json::json!({"patient": pk, "changed": changed.len(), "log_ids": batch.log_ids}),
                    ));
                }
                for (r, _) in changed.iter().filter(|(r, _)| r.nullified()) {
                    cs.audit.push(NewAuditEvent::system(kind::NULLIFIED, &info.correlation_id, connector, serde_json::json!({"patient": pk, "document": r.provenance().document_id})));
                }
                if let Some(mapper) = &rt.mapper {
                    // Map the patient's whole stored history with this pull's changes on top. A
                    // patient never seen before has no history, outbox records or worklist.
                    let seen_before = stored.is_some();
                    let mut all: BTreeMap<String, Record> = if seen_before {
                        store.patient_documents(connector, &pk).await?.into_iter().map(|r| (r.key(), r)).collect()
                    } else {
                        BTreeMap::new()
                    };
                    for (r, _) in &changed {
                        all.insert(r.key(), r.clone());
                    }
                    let records: Vec<Record> = all.into_values().collect();
                    let out = mapper.map_patient(&PatientInput { connector, register: &rt.def.register, patient: &batch.patient, patient_key: &pk, records: &records, today: info.today });
                    let existing = if seen_before {
                        Existing {
                            intents: store.intents_of_subject(connector, &pk).await?.into_iter().map(|(k, op, st)| (k, (op, st))).collect(),
                            worklist: store.worklist_keys_of_subject(connector, &pk).await?.into_iter().collect(),
                        }
                    } else {
                        Existing::default()
                    };
                    if out.opted_out {
                        report.opted_out += 1;
                    }
                    report.worklist_items += out.incomplete.len() as u64;
                    for n in &out.notes {
                        cs.audit.push(NewAuditEvent::system("mapping.note", &info.correlation_id, connector, serde_json::json!({"patient": pk, "note": n})));
                    }
                    cs.episodes.push((connector.clone(), pk.clone(), out.episodes));
                    reconcile(&mut cs, connector, &pk, Some(&batch.patient), out.intents, out.incomplete, &existing, out.opted_out, &info.correlation_id);
                }
                cs.documents.extend(changed.into_iter().map(|(record, h)| DocumentUpsert { connector: connector.clone(), patient_key: pk.clone(), record, content_hash: Some(h) }));
            }
        }
    }
    let o = if dry_run { store.preview(cs).await? } else { store.apply(cs).await? };
    report.add(&o);
    Ok(())
}

/// Today in Stockholm (the journal's calendar).
pub fn today_stockholm() -> NaiveDate {
    Utc::now().with_timezone(&chrono_tz::Europe::Stockholm).date_naive()
}

/// Convenience for callers that need an error when a connector is unknown.
pub fn find<'a>(rts: &'a [ConnectorRuntime], name: &str) -> Result<&'a ConnectorRuntime> {
    rts.iter().find(|r| r.def.name == name).with_context(|| format!("no connector named '{name}'"))
}

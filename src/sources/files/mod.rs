//! RIV-TA response documents dropped in a directory (for sites that export rather than serve).
//!
//! Only `*.xml` files that have stopped changing are read: a file whose modification time is at
//! least `settle_seconds` old, or that has been seen unchanged (size and mtime) for that long. A
//! half-written file is therefore never read; writers that write `*.tmp` and rename are fine too
//! (a `.tmp` is not looked at). A file that changes while it is read is left for the next pull.
//!
//! A pull that finds files still settling waits for them once (at most `settle_seconds`, at most a
//! minute), so a
//! one-shot `backfill` right after a drop reads what was dropped; a file still changing after that
//! is reported ("N files not settled yet") as a warning, and the pull is incomplete (the watermark
//! stays). The pull's period (`--from/--to`, or the connector's window) and the connector's patient
//! selection (`patients` file or SQL) apply: records outside them are left out, and a file with
//! records after or before the period stays in the directory for the pull that covers them.
//!
//! Records are grouped per patient across the pull's files. On `commit` (every batch stored) the
//! files are moved to `processed_directory` (default `<directory>/processed`), refused ones to
//! `<directory>/refused`, so nothing is read twice. A pull that is never committed (the run
//! failed) leaves its files in place; the connector's next pull reads them again, which is safe
//! because the same document read twice is the same record. One files source serves one connector.

use crate::config::{PatientDiscovery, SourceSettings};
use crate::model::PatientId;
use crate::sources::riv::{join_to_contacts, parse_response, Contract, ParseContext};
use crate::sources::{PatientBatch, PullRequest, PullSummary, Source, SourceItem};
use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use chrono::Utc;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;

/// Longest a pull waits for dropped files to settle.
const MAX_SETTLE_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Disposition {
    Processed,
    Refused,
}

#[derive(Default)]
struct State {
    /// Files read by a pull not committed yet, with the connector that read them.
    pending: HashMap<PathBuf, (String, Disposition)>,
    /// Files not settled by their mtime: (size, mtime) and when that was first seen.
    watch: HashMap<PathBuf, (u64, SystemTime, Instant)>,
}

pub struct FilesSource {
    settings: SourceSettings,
    dir: PathBuf,
    processed: PathBuf,
    refused: PathBuf,
    state: Mutex<State>,
}

impl FilesSource {
    pub fn new(settings: &SourceSettings) -> Result<FilesSource> {
        let dir = settings.directory.clone().context("a files source needs `directory`")?;
        let processed = settings.processed_directory.clone().unwrap_or_else(|| dir.join("processed"));
        let refused = dir.join("refused");
        Ok(FilesSource { settings: settings.clone(), dir, processed, refused, state: Mutex::default() })
    }

    pub fn directory(&self) -> &Path {
        &self.dir
    }
    pub fn processed_directory(&self) -> &Path {
        &self.processed
    }
    pub fn refused_directory(&self) -> &Path {
        &self.refused
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind; keep using it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Candidate files: regular `*.xml` files directly in the directory, by name.
    async fn candidates(&self) -> Result<Vec<PathBuf>> {
        let mut out = vec![];
        let mut rd = tokio::fs::read_dir(&self.dir).await.with_context(|| format!("cannot read directory {}", self.dir.display()))?;
        while let Some(e) = rd.next_entry().await? {
            let p = e.path();
            let is_xml = p.extension().is_some_and(|x| x.eq_ignore_ascii_case("xml"));
            if is_xml && e.file_type().await.map(|t| t.is_file()).unwrap_or(false) {
                out.push(p);
            }
        }
        out.sort();
        Ok(out)
    }

    fn settled(&self, path: &Path, len: u64, mtime: SystemTime) -> bool {
        self.settle_wait(path, len, mtime).is_none()
    }

    /// `None` when the file has settled; otherwise how long until it will have, if it stays as it is.
    fn settle_wait(&self, path: &Path, len: u64, mtime: SystemTime) -> Option<Duration> {
        let settle = Duration::from_secs(self.settings.settle_seconds);
        if settle.is_zero() {
            return None;
        }
        let age = SystemTime::now().duration_since(mtime).ok();
        if age.is_some_and(|age| age >= settle) {
            return None;
        }
        // Young by its own clock (or stamped in the future): read it once it has stayed the same.
        let mut st = self.state();
        let now = Instant::now();
        let seen = match st.watch.get(path) {
            Some((l, m, since)) if *l == len && *m == mtime => now.duration_since(*since),
            _ => {
                st.watch.insert(path.to_path_buf(), (len, mtime, now));
                Duration::ZERO
            }
        };
        let waited = seen.max(age.unwrap_or(Duration::ZERO));
        (waited < settle).then(|| settle - waited)
    }

    /// Files not read yet that are still settling, and the longest wait until they have.
    async fn unsettled(&self) -> Result<(usize, Duration)> {
        let mut n = 0;
        let mut longest = Duration::ZERO;
        for path in self.candidates().await? {
            if self.state().pending.contains_key(&path) {
                continue;
            }
            let Ok(meta) = tokio::fs::metadata(&path).await else { continue };
            let (len, Some(mtime)) = stamp(&meta) else { continue };
            if let Some(w) = self.settle_wait(&path, len, mtime) {
                n += 1;
                longest = longest.max(w);
            }
        }
        Ok((n, longest))
    }
}

fn stamp(meta: &std::fs::Metadata) -> (u64, Option<SystemTime>) {
    (meta.len(), meta.modified().ok())
}

async fn send(out: &mpsc::Sender<SourceItem>, item: SourceItem) -> Result<()> {
    out.send(item).await.map_err(|_| anyhow!("the pipeline stopped receiving source items"))
}

/// Move a file into `dir`, never overwriting what is there.
async fn move_aside(path: &Path, dir: &Path) -> Result<PathBuf> {
    tokio::fs::create_dir_all(dir).await.with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path.file_name().context("file without a name")?;
    let mut target = dir.join(name);
    if tokio::fs::try_exists(&target).await.unwrap_or(false) {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        target = dir.join(format!("{stem}-{}.xml", Utc::now().format("%Y%m%dT%H%M%S%.6f")));
    }
    if tokio::fs::rename(path, &target).await.is_err() {
        // Another filesystem: copy, then remove the original.
        tokio::fs::copy(path, &target).await.with_context(|| format!("cannot move {} to {}", path.display(), dir.display()))?;
        tokio::fs::remove_file(path).await.with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(target)
}

impl FilesSource {
    /// The connector's patient selection: `None` (everyone in the files) unless `patients` is a
    /// file or a SQL query. Refused list entries are reported like any refusal.
    async fn selection(&self, req: &PullRequest, out: &mpsc::Sender<SourceItem>, summary: &mut PullSummary) -> Result<Option<HashSet<PatientId>>> {
        use crate::sources::riv::discovery;
        let list = match &req.discovery {
            PatientDiscovery::EngagementIndex { .. } | PatientDiscovery::All => return Ok(None),
            PatientDiscovery::File { path } => {
                let full = if path.is_absolute() { path.clone() } else { req.connector_dir.join(path) };
                discovery::from_file(&full, req.today).await?
            }
            PatientDiscovery::Sql { url, query } => discovery::from_sql(url, query, req.today).await?,
        };
        for refusal in list.refused {
            summary.refused += 1;
            send(out, SourceItem::Refused { refusal, patient: None, raw: None, transient: false }).await?;
        }
        Ok(Some(list.patients.into_iter().collect()))
    }
}

#[async_trait]
impl Source for FilesSource {
    async fn pull(&self, req: &PullRequest, out: mpsc::Sender<SourceItem>) -> Result<PullSummary> {
        let mut summary = PullSummary { started_at: Some(Utc::now()), complete: true, ..Default::default() };
        {
            // This connector's earlier pull was never committed: its files are read again.
            let mut st = self.state();
            let before = st.pending.len();
            st.pending.retain(|_, (connector, _)| connector != &req.connector);
            if st.pending.len() != before {
                tracing::warn!(connector = %req.connector, files = before - st.pending.len(), "files of an uncommitted pull are read again");
            }
        }
        // Files dropped just before the pull are waited for once, so a one-shot backfill right
        // after a drop reads them; what is still changing after that is reported below.
        let (young, wait) = self.unsettled().await?;
        // Not longer than a minute: a long settle time is a slow writer's, reported below.
        let wait = wait.min(MAX_SETTLE_WAIT);
        if young > 0 {
            tracing::info!(files = young, wait_ms = wait.as_millis() as u64, "waiting for dropped files to settle");
            tokio::time::sleep(wait + Duration::from_millis(50)).await;
        }
        let keywords = crate::sources::riv::keywords::KeywordTable::for_connector(&req.connector_dir)?;
        let selected = self.selection(req, &out, &mut summary).await?;
        let mut batches: Vec<PatientBatch> = vec![];
        let mut index: HashMap<PatientId, usize> = HashMap::new();
        let mut kept_for_period = 0usize;
        let mut not_selected = 0usize;
        for path in self.candidates().await? {
            if self.state().pending.contains_key(&path) {
                continue;
            }
            let Ok(meta) = tokio::fs::metadata(&path).await else { continue };
            let before = stamp(&meta);
            let Some(mtime) = before.1 else { continue };
            if !self.settled(&path, before.0, mtime) {
                continue;
            }
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let mut ctx = ParseContext::from_settings(&req.connector, &self.settings, req.today);
            ctx.units = req.units.clone();
            ctx.keywords = keywords.clone();
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "cannot open; left for the next pull");
                    continue;
                }
            };
            let parsed = parse_response(tokio::io::BufReader::new(file), &name, &ctx).await;
            let after = tokio::fs::metadata(&path).await.map(|m| stamp(&m)).ok();
            if after != Some(before) {
                tracing::warn!(file = %name, "file changed while it was read; left for the next pull");
                continue;
            }
            self.state().watch.remove(&path);
            let disposition = match parsed {
                Ok(p) if p.contract == Contract::GetUpdates => {
                    summary.refused += 1;
                    let refusal = crate::model::Refusal {
                        document: name.clone(),
                        field: "GetUpdatesResponse".into(),
                        reason: "an engagement-index document carries no journal data".into(),
                    };
                    send(&out, SourceItem::Refused { refusal, patient: None, raw: None, transient: false }).await?;
                    Disposition::Refused
                }
                Ok(p) => {
                    summary.documents += 1;
                    let log_ids = p.log_ids();
                    // Records outside the pull's period are another pull's: the file stays for it.
                    let outside = p.records.iter().filter(|r| r.date().is_some_and(|d| d < req.window_from || d > req.window_to)).count();
                    for r in p.records {
                        if r.date().is_some_and(|d| d < req.window_from || d > req.window_to) {
                            continue;
                        }
                        if selected.as_ref().is_some_and(|s| !s.contains(r.patient())) {
                            not_selected += 1;
                            continue;
                        }
                        let i = *index.entry(r.patient().clone()).or_insert_with(|| {
                            batches.push(PatientBatch { patient: r.patient().clone(), records: vec![], refusals: vec![], log_ids: vec![] });
                            batches.len() - 1
                        });
                        let b = &mut batches[i];
                        for l in &log_ids {
                            if !b.log_ids.contains(l) {
                                b.log_ids.push(l.clone());
                            }
                        }
                        b.records.push(r);
                    }
                    // A file may hold several patients: item refusals travel on their own.
                    for refusal in p.refused {
                        summary.refused += 1;
                        send(&out, SourceItem::Refused { refusal, patient: None, raw: None, transient: false }).await?;
                    }
                    if outside > 0 {
                        // Read again by the pull whose period covers the rest (the same document
                        // read twice is one record), so it is not moved aside.
                        kept_for_period += 1;
                        continue;
                    }
                    Disposition::Processed
                }
                Err(e) if e.transient => {
                    tracing::warn!(file = %name, reason = %e.refusal.reason, "read failed; left for the next pull");
                    summary.complete = false;
                    continue;
                }
                Err(e) => {
                    summary.refused += 1;
                    send(&out, SourceItem::Refused { refusal: e.refusal, patient: None, raw: None, transient: false }).await?;
                    Disposition::Refused
                }
            };
            self.state().pending.insert(path.clone(), (req.connector.clone(), disposition));
            summary.files.push(path);
        }
        for mut b in batches {
            join_to_contacts(&mut b.records);
            summary.patients += 1;
            send(&out, SourceItem::Patient(b)).await?;
        }
        let (still, _) = self.unsettled().await?;
        if still > 0 {
            summary.complete = false;
            summary.warnings.push(format!("{still} file(s) not settled yet (changed within settle_seconds = {}): not read", self.settings.settle_seconds));
        }
        if kept_for_period > 0 {
            summary.warnings.push(format!(
                "{kept_for_period} file(s) hold records outside {} – {}: those records were left out and the files stay for a pull that covers them",
                req.window_from, req.window_to
            ));
        }
        if not_selected > 0 {
            tracing::info!(records = not_selected, "records of patients outside the connector's patient selection left out");
        }
        Ok(summary)
    }

    async fn commit(&self, summary: &PullSummary) -> Result<()> {
        let mut failed = vec![];
        for path in &summary.files {
            let disposition = self.state().pending.remove(path).map(|(_, d)| d).unwrap_or(Disposition::Processed);
            if !tokio::fs::try_exists(path).await.unwrap_or(false) {
                continue;
            }
            let dir = if disposition == Disposition::Refused { &self.refused } else { &self.processed };
            if let Err(e) = move_aside(path, dir).await {
                tracing::error!(file = %path.display(), error = %format!("{e:#}"), "cannot move a consumed file aside");
                failed.push(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            }
        }
        if !failed.is_empty() {
            return Err(anyhow!("could not move {} consumed file(s) aside: {}", failed.len(), failed.join(", ")));
        }
        Ok(())
    }
}

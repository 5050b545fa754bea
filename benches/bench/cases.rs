//! What can be measured (one `Case` per child process) and what a run measures (`plan`).

use crate::Options;
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseMode {
    /// Our parser and mapping into canonical records.
    Ours,
    /// A bare `quick_xml::Reader` event loop over the same bytes (the baseline).
    Bare,
    /// Only drain the generator (what the stream source itself costs).
    Generator,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PipeMode {
    /// The real chain: journal → RIV consumer → pipeline → store (documents, outbox, audit).
    Full,
    /// The RIV source alone (fetch + parse + join), its batches dropped: no store.
    Source,
    /// The bare fetch loop: the same requests with the same client and concurrency, bodies
    /// read and dropped (no parsing, no store).
    Fetch,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryMode {
    /// The delivery engine (claim, send through the Stratum client, finish) on the outbox.
    Engine,
    /// A bare reqwest loop POSTing the same payloads with the same TLS and concurrency.
    Bare,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SealMode {
    /// The store's format now (`v3`: compressed against the dictionary, binary).
    Current,
    /// The format before it (`v2`: JSON, AES-GCM, base64 text): the baseline.
    V2,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Case {
    /// Every patient's four clinical documents, rendered in memory, parsed one by one.
    ParseMixed { patients: usize, mode: ParseMode },
    /// Every patient's keyword notes (GetCareDocumentation, read with the shipped keyword table).
    ParseNotes { patients: usize, mode: ParseMode },
    /// One document of `bytes` bytes streamed from a generator (never held in memory).
    ParseStream { contract: String, bytes: u64, mode: ParseMode },
    /// A synthetic region from the sandbox journal into the outbox.
    Pipeline {
        backend: String,
        contacts: u64,
        connector: String,
        concurrency: usize,
        mode: PipeMode,
        /// The source's `unit_filter` ("request" | "response"); absent: the configured one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unit_filter: Option<String>,
        /// "process": the sandbox (journal, emulators, their population) runs in a process of
        /// its own, so the peak RSS is the daemon's alone (full mode only); absent: in this one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sandbox: Option<String>,
    },
    /// Every record of `patients` patients sealed as the store seals a document, then opened.
    Seal { patients: usize, mode: SealMode },
    /// Registrations from the outbox to the Stratum emulator.
    Delivery { backend: String, records: usize, workers: usize, batch_size: u32, mode: DeliveryMode },
}

impl Case {
    pub fn label(&self) -> String {
        match self {
            Case::ParseMixed { patients, mode } => format!("parse mixed {patients} patients, {mode:?}"),
            Case::ParseNotes { patients, mode } => format!("parse keyword notes {patients} patients, {mode:?}"),
            Case::ParseStream { contract, bytes, mode } => format!("parse stream {contract} {} MiB, {mode:?}", bytes >> 20),
            Case::Pipeline { backend, contacts, connector, concurrency, mode, unit_filter, sandbox } => {
                let uf = unit_filter.as_deref().map(|u| format!(", unit_filter {u}")).unwrap_or_default();
                let sb = sandbox.as_deref().map(|s| format!(", sandbox in its own {s}")).unwrap_or_default();
                format!("pipeline {connector} {contacts} contacts on {backend}, concurrency {concurrency}{uf}{sb}, {mode:?}")
            }
            Case::Seal { patients, mode } => format!("seal documents of {patients} patients, {mode:?}"),
            Case::Delivery { backend, records, workers, batch_size, mode } => {
                format!("delivery {records} records on {backend}, {workers} workers × batch {batch_size}, {mode:?}")
            }
        }
    }
}

pub fn run_case(case: &Case) -> Result<Value> {
    match case {
        Case::ParseMixed { patients, mode } => crate::parse::mixed(*patients, *mode),
        Case::ParseNotes { patients, mode } => crate::parse::notes(*patients, *mode),
        Case::ParseStream { contract, bytes, mode } => crate::parse::stream(contract, *bytes, *mode),
        Case::Pipeline { backend, contacts, connector, concurrency, mode, unit_filter, sandbox } => {
            let apart = match sandbox.as_deref() {
                None => false,
                Some("process") => true,
                Some(other) => bail!("unknown sandbox placement {other:?} (\"process\" or absent)"),
            };
            with_clean_up(crate::pipeline::run(backend, *contacts, connector, *concurrency, *mode, unit_filter.as_deref(), apart))
        }
        Case::Seal { patients, mode } => crate::seal::run(*patients, *mode),
        Case::Delivery { backend, records, workers, batch_size, mode } => with_clean_up(crate::delivery::run(backend, *records, *workers, *batch_size, *mode)),
    }
}

/// Run a case that makes folders or databases, and remove them when it ends, failed or not.
fn with_clean_up(case: impl std::future::Future<Output = Result<Value>>) -> Result<Value> {
    runtime()?.block_on(async {
        let r = case.await;
        crate::pipeline::clean_up().await;
        r
    })
}

/// The daemon's runtime shape: multi-threaded, one worker per core.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

pub fn summary_line(r: &Value) -> String {
    let f = |k: &str| r.get(k).and_then(Value::as_f64);
    let mut parts = vec![];
    if let Some(v) = f("seconds") {
        parts.push(format!("{v:.2}s"));
    }
    if let Some(v) = f("records_per_second") {
        parts.push(format!("{v:.0} records/s"));
    }
    if let Some(v) = f("contacts_per_second") {
        parts.push(format!("{v:.0} contacts/s"));
    }
    if let Some(v) = f("registrations_per_second") {
        parts.push(format!("{v:.0} registrations/s"));
    }
    if let Some(v) = f("mib_per_second") {
        parts.push(format!("{v:.0} MiB/s"));
    }
    if let Some(v) = f("peak_rss_kb") {
        parts.push(format!("peak RSS {:.0} MiB", v / 1024.0));
    }
    parts.join(", ")
}

/// One group of cases measured together (interleaved), `repeats` times.
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    pub name: String,
    pub repeats: usize,
    pub cases: Vec<Case>,
}

pub struct Plan {
    pub groups: Vec<Group>,
    pub notes: Vec<String>,
}

pub const PG: &str = "postgres";
pub const SQLITE: &str = "sqlite";

/// The connector measured in (b) and (d).
pub const REGION_CONNECTOR: &str = "primarvardskvalitet";

pub fn plan(o: &Options) -> Result<Plan> {
    let q = o.quick;
    let reps = |full: usize| o.repeats.unwrap_or(if q { 1 } else { full });
    let mut groups = vec![];
    let mut notes = vec![];
    let backends: Vec<&str> = if o.pg_url.is_some() { vec![SQLITE, PG] } else { vec![SQLITE] };
    if o.pg_url.is_none() {
        notes.push("PostgreSQL cases skipped: RB_BENCH_PG_URL is not set (scripts/bench starts a cluster).".into());
    }
    // Repeats are what a 2-core machine shared with others allows in about 45 minutes: the
    // region-size run alone takes ~15 minutes there, so it runs once; smaller sizes repeat.
    if o.wants("a") {
        let patients = if q { 1_000 } else { 8_000 };
        groups.push(Group {
            name: "a_mixed".into(),
            repeats: reps(3),
            cases: vec![ParseMode::Ours, ParseMode::Bare].into_iter().map(|mode| Case::ParseMixed { patients, mode }).collect(),
        });
        let bytes = if q { 64u64 << 20 } else { 1u64 << 30 };
        groups.push(Group {
            name: "a_seal".into(),
            repeats: reps(3),
            cases: [SealMode::Current, SealMode::V2].into_iter().map(|mode| Case::Seal { patients: if q { 500 } else { 4_000 }, mode }).collect(),
        });
        groups.push(Group {
            name: "a_stream".into(),
            repeats: reps(3),
            cases: [ParseMode::Ours, ParseMode::Bare, ParseMode::Generator]
                .into_iter()
                .map(|mode| Case::ParseStream { contract: "GetObservations".into(), bytes, mode })
                .collect(),
        });
    }
    let region: u64 = o.contacts.unwrap_or(if q { 20_000 } else { 1_000_000 });
    let concurrency = o.concurrency.unwrap_or(8);
    let pipe_with = |backend: &str, contacts: u64, mode: PipeMode, sandbox: Option<&str>| Case::Pipeline {
        backend: backend.into(),
        contacts,
        connector: REGION_CONNECTOR.into(),
        concurrency,
        mode,
        unit_filter: o.unit_filter.clone(),
        sandbox: sandbox.map(str::to_string),
    };
    let pipe = |backend: &str, contacts: u64, mode: PipeMode| pipe_with(backend, contacts, mode, None);
    if o.wants("b") {
        // The source-only baseline shows the RIV consumer's own share (fetch + parse + join).
        groups.push(Group {
            name: "b_region_sqlite".into(),
            repeats: reps(1),
            cases: vec![pipe(SQLITE, region, PipeMode::Full), pipe(SQLITE, region, PipeMode::Source), pipe(SQLITE, region, PipeMode::Fetch)],
        });
    }
    if o.wants("c") {
        let records = if q { 2_000 } else { 10_000 };
        // The shipped defaults (config/default.toml).
        let (workers, batch) = (4, 64);
        for b in &backends {
            groups.push(Group {
                name: format!("c_delivery_{b}"),
                repeats: reps(2),
                cases: [DeliveryMode::Engine, DeliveryMode::Bare]
                    .into_iter()
                    .map(|mode| Case::Delivery { backend: b.to_string(), records, workers, batch_size: batch, mode })
                    .collect(),
            });
        }
    }
    if o.wants("d") {
        let (small, mid, large): (Vec<u64>, u64, u64) = if q { (vec![2_000, 6_000], 10_000, 20_000) } else { (vec![10_000, 30_000], 100_000, 300_000) };
        groups.push(Group { name: "d_growth_sqlite_small".into(), repeats: reps(3), cases: small.iter().map(|c| pipe(SQLITE, *c, PipeMode::Full)).collect() });
        // The three-way split (full / source only / fetch only) at a mid size, in the same run.
        groups.push(Group {
            name: "d_growth_sqlite_large".into(),
            repeats: reps(1),
            cases: vec![pipe(SQLITE, mid, PipeMode::Full), pipe(SQLITE, mid, PipeMode::Source), pipe(SQLITE, mid, PipeMode::Fetch), pipe(SQLITE, large, PipeMode::Full)],
        });
        // The daemon's memory alone: the same two sizes with the sandbox in its own process.
        let apart = |contacts: u64| pipe_with(SQLITE, contacts, PipeMode::Full, Some("process"));
        groups.push(Group { name: "d_growth_sqlite_daemon_alone".into(), repeats: reps(1), cases: vec![apart(mid), apart(large)] });
        if backends.contains(&PG) && !q {
            groups.push(Group { name: "d_growth_postgres".into(), repeats: reps(1), cases: [30_000, mid, large].iter().map(|c| pipe(PG, *c, PipeMode::Full)).collect() });
        }
        notes.push("Growth at the region size (1M contacts) is the (b) run.".into());
    }
    if groups.is_empty() {
        bail!("nothing to run (--only takes a, b, c, d)");
    }
    Ok(Plan { groups, notes })
}

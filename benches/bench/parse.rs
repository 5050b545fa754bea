//! (a) Parse + map throughput on one core, against a bare quick-xml event loop over the same bytes.

use crate::cases::ParseMode;
use crate::{cpu_seconds, pin_to_one_cpu};
use anyhow::{bail, Context, Result};
use registerbrygga::sandbox::journal::{render_patient, Contract as JContract, Population, PopulationSpec, SharedPopulation};
use registerbrygga::sources::riv::parse::{parse_response_with, Item, ParseContext};
use serde_json::{json, Value};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, ReadBuf};

pub const SEED: u64 = 8;
const CONTRACTS: [JContract; 4] = [JContract::GetCareContacts, JContract::GetDiagnosis, JContract::GetActivities, JContract::GetObservations];
/// Patients whose rendered items the stream generator cycles through.
const POOL_PATIENTS: usize = 400;

fn context(today: chrono::NaiveDate) -> ParseContext {
    let mut ctx = ParseContext::new("bench", today);
    // The sandbox's local terms, as the sandbox configuration accepts them.
    ctx.known_code_systems.push(registerbrygga::sandbox::vocabulary::LOCAL_TERMS.into());
    ctx.reserve_oids.push(registerbrygga::sandbox::journal::OID_RESERVE_VARMLAND.into());
    ctx.max_response_bytes = u64::MAX;
    ctx
}

fn population(patients: usize, today: chrono::NaiveDate) -> SharedPopulation {
    Arc::new(Population::generate(&PopulationSpec::new(SEED, patients, today)))
}

#[derive(Default)]
struct Counted {
    records: u64,
    refused: u64,
    events: u64,
}

async fn ours<R: AsyncBufRead + Unpin>(reader: R, ctx: &ParseContext, c: &mut Counted) -> Result<()> {
    parse_response_with(reader, "bench document", ctx, |item| match item {
        Item::Record(_) => c.records += 1,
        Item::Refused(r) => {
            if c.refused < 5 {
                eprintln!("refused: {} {}: {}", r.document, r.field, r.reason);
            }
            c.refused += 1
        }
        Item::Resident(_) => {}
    })
    .await
    .map_err(|e| anyhow::anyhow!("document refused: {e}"))?;
    Ok(())
}

/// The baseline: quick-xml's plain reader, every event read into a buffer and dropped.
async fn bare<R: AsyncBufRead + Unpin>(reader: R, c: &mut Counted) -> Result<()> {
    let mut r = quick_xml::Reader::from_reader(reader);
    let mut buf = Vec::with_capacity(4096);
    loop {
        match r.read_event_into_async(&mut buf).await? {
            quick_xml::events::Event::Eof => return Ok(()),
            _ => c.events += 1,
        }
        buf.clear();
    }
}

/// Each patient's four clinical documents, with the index of their contract.
fn rendered(pop: &SharedPopulation, patients: usize) -> Vec<(usize, Vec<u8>)> {
    (0..patients).flat_map(|p| CONTRACTS.iter().enumerate().map(move |(ci, c)| (ci, render_patient(pop, *c, p)))).collect()
}

/// The records of `patients` patients' four clinical documents (for the seal case).
pub fn records(patients: usize) -> Result<Vec<registerbrygga::model::Record>> {
    let today = registerbrygga::pipeline::today_stockholm();
    let docs = rendered(&population(patients, today), patients);
    let ctx = context(today);
    let mut out = vec![];
    for (_, d) in &docs {
        futures::executor::block_on(parse_response_with(&d[..], "bench document", &ctx, |item| {
            if let Item::Record(r) = item {
                out.push(r)
            }
        }))
        .map_err(|e| anyhow::anyhow!("document refused: {e}"))?;
    }
    Ok(out)
}

/// Every patient's four documents rendered up front, then parsed one after the other.
pub fn mixed(patients: usize, mode: ParseMode) -> Result<Value> {
    let today = registerbrygga::pipeline::today_stockholm();
    let pop = population(patients, today);
    let docs = rendered(&pop, patients);
    let stats = pop.stats().clone();
    drop(pop);
    let bytes: u64 = docs.iter().map(|(_, d)| d.len() as u64).sum();
    let cpu = pin_to_one_cpu();
    let ctx = context(today);
    let mut c = Counted::default();
    let mut per_contract = [0u64; 4];
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    futures::executor::block_on(async {
        for (ci, d) in &docs {
            let before = c.records;
            match mode {
                ParseMode::Ours => ours(&d[..], &ctx, &mut c).await?,
                ParseMode::Bare => bare(&d[..], &mut c).await?,
                ParseMode::Generator => bail!("no generator in the mixed corpus"),
            }
            per_contract[*ci] += c.records - before;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    if c.refused > 0 {
        bail!("{} items refused in a clean corpus", c.refused);
    }
    Ok(json!({
        "seconds": secs,
        "cpu_seconds": cpu_s,
        "pinned_cpu": cpu,
        "documents": docs.len(),
        "bytes": bytes,
        "mib_per_second": bytes as f64 / secs / 1048576.0,
        "records": c.records,
        "records_per_second": (mode == ParseMode::Ours).then(|| c.records as f64 / secs),
        "records_by_contract": {"contacts": per_contract[0], "diagnoses": per_contract[1], "activities": per_contract[2], "observations": per_contract[3]},
        "events": c.events,
        "population": stats,
    }))
}

/// Every patient's keyword notes rendered up front, then parsed one after the other with the
/// shipped keyword table (ours) or read event by event (bare quick-xml).
pub fn notes(patients: usize, mode: ParseMode) -> Result<Value> {
    let today = registerbrygga::pipeline::today_stockholm();
    let pop = population(patients, today);
    let docs: Vec<Vec<u8>> = (0..patients).map(|p| render_patient(&pop, JContract::GetCareDocumentation, p)).collect();
    drop(pop);
    let bytes: u64 = docs.iter().map(|d| d.len() as u64).sum();
    let cpu = pin_to_one_cpu();
    let mut ctx = context(today);
    ctx.keywords = Some(Arc::new(registerbrygga::sandbox::journal::notes::keyword_table().clone()));
    let mut c = Counted::default();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    futures::executor::block_on(async {
        for d in &docs {
            match mode {
                ParseMode::Ours => ours(&d[..], &ctx, &mut c).await?,
                ParseMode::Bare => bare(&d[..], &mut c).await?,
                ParseMode::Generator => bail!("no generator for notes"),
            }
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let secs = t.elapsed().as_secs_f64();
    let cpu_s = cpu_seconds() - cpu0;
    if c.refused > 0 {
        bail!("{} keywords refused in a clean corpus", c.refused);
    }
    Ok(json!({
        "seconds": secs,
        "cpu_seconds": cpu_s,
        "pinned_cpu": cpu,
        "documents": docs.len(),
        "bytes": bytes,
        "mib_per_second": bytes as f64 / secs / 1048576.0,
        "records": c.records,
        "records_per_second": (mode == ParseMode::Ours).then(|| c.records as f64 / secs),
        "events": c.events,
    }))
}

fn contract_named(name: &str) -> Result<JContract> {
    CONTRACTS.into_iter().find(|c| c.name() == name).with_context(|| format!("no clinical contract named {name}"))
}

/// Split a rendered response into (envelope and root start, items, result and the ends).
fn split(doc: &[u8]) -> Result<(&[u8], &[u8], &[u8])> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let root = find(doc, b"Response xmlns:tns=").context("no response root")?;
    let head_end = root + doc[root..].iter().position(|b| *b == b'>').context("unterminated root")? + 1;
    let tail_start = ["<tns:result>", "<result>"]
        .iter()
        .filter_map(|n| doc.windows(n.len()).rposition(|w| w == n.as_bytes()))
        .max()
        .context("no result element")?;
    Ok((&doc[..head_end], &doc[head_end..tail_start], &doc[tail_start..]))
}

/// One huge response document produced on the fly: the envelope, then the items of a pool of
/// patients over and over until `target` bytes, then the result and the closing tags. Only the
/// pool (a few MiB) is ever in memory; the pieces are handed out as slices, so the generator
/// itself costs next to nothing (measured on its own as `Generator`).
struct Stream {
    head: Vec<u8>,
    bodies: Vec<Vec<u8>>,
    tail: Vec<u8>,
    target: u64,
    emitted: u64,
    stage: u8,
    idx: usize,
    off: usize,
}

impl Stream {
    fn piece(&self) -> &[u8] {
        match self.stage {
            0 => &self.head,
            1 => &self.bodies[self.idx],
            2 => &self.tail,
            _ => &[],
        }
    }
}

impl AsyncBufRead for Stream {
    fn poll_fill_buf(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<std::io::Result<&[u8]>> {
        let this = self.get_mut();
        loop {
            if this.stage > 2 || this.off < this.piece().len() {
                break;
            }
            this.off = 0;
            match this.stage {
                0 => this.stage = 1,
                1 => {
                    this.idx = (this.idx + 1) % this.bodies.len();
                    if this.emitted >= this.target {
                        this.stage = 2;
                    }
                }
                _ => this.stage = 3,
            }
        }
        let off = this.off;
        Poll::Ready(Ok(&this.piece()[off..]))
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.off += amt;
        this.emitted += amt as u64;
    }
}

impl AsyncRead for Stream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let n = match self.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(b)) => {
                let n = b.len().min(out.remaining());
                out.put_slice(&b[..n]);
                n
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

pub fn stream(contract: &str, bytes: u64, mode: ParseMode) -> Result<Value> {
    let today = registerbrygga::pipeline::today_stockholm();
    let c = contract_named(contract)?;
    let pop = population(POOL_PATIENTS, today);
    let first = render_patient(&pop, c, 0);
    let (head, _, tail) = split(&first)?;
    let (head, tail) = (head.to_vec(), tail.to_vec());
    let mut bodies = vec![];
    for p in 0..POOL_PATIENTS {
        let d = render_patient(&pop, c, p);
        let (_, body, _) = split(&d)?;
        if !body.is_empty() {
            bodies.push(body.to_vec());
        }
    }
    drop(pop);
    let pool_bytes: usize = bodies.iter().map(Vec::len).sum();
    let mut s = Stream { head, bodies, tail, target: bytes, emitted: 0, stage: 0, idx: 0, off: 0 };
    let cpu = pin_to_one_cpu();
    let ctx = context(today);
    let mut counted = Counted::default();
    let rss_before = crate::rss_kb();
    let cpu0 = cpu_seconds();
    let t = Instant::now();
    futures::executor::block_on(async {
        match mode {
            ParseMode::Ours => ours(&mut s, &ctx, &mut counted).await,
            ParseMode::Bare => bare(&mut s, &mut counted).await,
            ParseMode::Generator => {
                loop {
                    let n = s.fill_buf().await?.len();
                    if n == 0 {
                        break;
                    }
                    s.consume(n);
                }
                Ok(())
            }
        }
    })?;
    let secs = t.elapsed().as_secs_f64();
    if counted.refused > 0 {
        bail!("{} items refused in a clean stream", counted.refused);
    }
    Ok(json!({
        "seconds": secs,
        "cpu_seconds": cpu_seconds() - cpu0,
        "pinned_cpu": cpu,
        "bytes": s.emitted,
        "pool_bytes": pool_bytes,
        "rss_before_kb": rss_before,
        "mib_per_second": s.emitted as f64 / secs / 1048576.0,
        "records": counted.records,
        "records_per_second": (mode == ParseMode::Ours).then(|| counted.records as f64 / secs),
        "events": counted.events,
    }))
}

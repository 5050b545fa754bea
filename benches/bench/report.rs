//! Medians, ratios and BENCHMARKS.md from the raw results.

use anyhow::Result;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::path::Path;

pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    let nproc = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let rustc = std::process::Command::new("rustc").arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
    json!({"nproc": nproc, "memory_gib": mem_kb as f64 / 1048576.0, "cpu_model": model, "kernel": kernel, "rustc": rustc})
}

#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    pub fn of(mut v: Vec<f64>) -> Option<Stat> {
        v.retain(|x| x.is_finite());
        if v.is_empty() {
            return None;
        }
        v.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Some(Stat { median, min: v[0], max: v[n - 1], n })
    }
    /// `median (min–max, n=N)` with `digits` decimals.
    pub fn show(&self, digits: usize, scale: f64) -> String {
        let f = |x: f64| fmt_num(x * scale, digits);
        if self.n == 1 {
            return format!("{} (n=1)", f(self.median));
        }
        format!("{} ({}–{}, n={})", f(self.median), f(self.min), f(self.max), self.n)
    }
    pub fn to_json(self) -> Value {
        json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}

fn fmt_num(x: f64, digits: usize) -> String {
    let s = format!("{x:.digits$}");
    // Thousands separators for the integer part (narrow no-break space is hard to type; use ',').
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i.to_string(), Some(f.to_string())),
        None => (s.clone(), None),
    };
    let neg = int.starts_with('-');
    let digits_only: String = int.trim_start_matches('-').to_string();
    let mut grouped = String::new();
    for (i, c) in digits_only.chars().enumerate() {
        if i > 0 && (digits_only.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let mut out = if neg { format!("-{grouped}") } else { grouped };
    if let Some(f) = frac {
        out.push('.');
        out.push_str(&f);
    }
    out
}

fn runs(results: &Value) -> Vec<&Value> {
    results["runs"].as_array().map(|a| a.iter().filter(|r| r.get("error").is_none()).collect()).unwrap_or_default()
}

fn matching<'a>(results: &'a Value, pred: impl Fn(&Value) -> bool) -> Vec<&'a Value> {
    runs(results).into_iter().filter(|r| pred(&r["case"])).collect()
}

fn metric(rs: &[&Value], key: &str) -> Option<Stat> {
    Stat::of(rs.iter().filter_map(|r| pointer(r, key)).collect())
}

fn pointer(r: &Value, key: &str) -> Option<f64> {
    if key.starts_with('/') {
        r.pointer(key).and_then(Value::as_f64)
    } else {
        r.get(key).and_then(Value::as_f64)
    }
}

/// Per-repeat ratio a/b of one metric, pairing runs of the same group and repeat.
fn paired_ratio(a: &[&Value], b: &[&Value], key: &str) -> Option<Stat> {
    let mut v = vec![];
    for x in a {
        if let Some(y) = b.iter().find(|y| y["repeat"] == x["repeat"] && y["group"] == x["group"]) {
            if let (Some(p), Some(q)) = (pointer(x, key), pointer(y, key)) {
                if q > 0.0 {
                    v.push(p / q);
                }
            }
        }
    }
    Stat::of(v)
}

/// Records per CPU second of each run (the parse cases are single-threaded while measuring).
fn per_cpu_second(rs: &[&Value]) -> Option<Stat> {
    Stat::of(rs.iter().filter_map(|r| Some(r["records"].as_f64()? / r["cpu_seconds"].as_f64()?)).collect())
}

fn is(case: &Value, kind: &str, field: &str, value: &str) -> bool {
    case["kind"] == kind && case[field] == value
}

/// A full region run with the sandbox in the measured process: the cases the time tables and
/// the full ÷ fetch-only ratio compare (the daemon-alone runs only enter the RSS ratio).
fn full_here(case: &Value) -> bool {
    case["kind"] == "pipeline" && case["mode"] == "full" && case["sandbox"].is_null()
}

pub fn summarise(results: &Value) -> Value {
    let mut by_label: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for r in runs(results) {
        by_label.entry(serde_json::to_string(&r["case"]).unwrap_or_default()).or_default().push(r);
    }
    let mut out = vec![];
    for (label, rs) in by_label {
        let mut m = serde_json::Map::new();
        for k in ["seconds", "records_per_second", "contacts_per_second", "registrations_per_second", "mib_per_second", "peak_rss_kb", "cpu_seconds", "pull_store_seconds", "after_pull_seconds"] {
            if let Some(s) = metric(&rs, k) {
                m.insert(k.into(), s.to_json());
            }
        }
        out.push(json!({"case": serde_json::from_str::<Value>(&label).unwrap_or_default(), "metrics": m}));
    }
    Value::from(out)
}

/// contacts, seconds (median), peak RSS MiB (median), backend — for the growth plot.
pub fn growth_rows(results: &Value) -> Vec<(String, u64, Stat, Stat, Stat)> {
    let mut sizes: Vec<(String, u64)> = vec![];
    for r in runs(results) {
        let c = &r["case"];
        if full_here(c) {
            let key = (c["backend"].as_str().unwrap_or("").to_string(), c["contacts"].as_u64().unwrap_or(0));
            if !sizes.contains(&key) {
                sizes.push(key);
            }
        }
    }
    sizes.sort();
    sizes
        .into_iter()
        .filter_map(|(b, n)| {
            let rs = matching(results, |c| full_here(c) && c["backend"] == b.as_str() && c["contacts"] == n);
            let contacts = metric(&rs, "contacts")?.median as u64;
            Some((b, contacts, metric(&rs, "seconds")?, metric(&rs, "peak_rss_kb")?, metric(&rs, "contacts_per_second")?))
        })
        .collect()
}

pub fn write_growth_csv(results: &Value, path: &Path) -> Result<()> {
    let mut s = String::from("backend,contacts,seconds_median,seconds_min,seconds_max,peak_rss_mib_median,contacts_per_second_median,n\n");
    for (b, c, t, m, r) in growth_rows(results) {
        writeln!(s, "{b},{c},{:.3},{:.3},{:.3},{:.1},{:.0},{}", t.median, t.min, t.max, m.median / 1024.0, r.median, t.n)?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

fn yes(b: bool) -> &'static str {
    if b {
        "**met**"
    } else {
        "**not met**"
    }
}

pub fn write_markdown(results: &Value, path: &Path) -> Result<()> {
    let m = &results["machine"];
    let mut s = String::new();
    writeln!(s, "# Benchmarks\n")?;
    writeln!(s, "Generated by `{}` (raw results: `target/bench-results/results.json`, committed copy: `docs/bench-results.json`).\n", results["command"].as_str().unwrap_or("scripts/bench"))?;
    writeln!(s, "| | |\n|---|---|")?;
    writeln!(s, "| date | {} → {} |", results["started_at"].as_str().unwrap_or(""), results["finished_at"].as_str().unwrap_or(""))?;
    writeln!(s, "| machine | {} cores (`nproc`), {:.1} GiB memory, {} |", m["nproc"], m["memory_gib"].as_f64().unwrap_or(0.0), m["cpu_model"].as_str().unwrap_or(""))?;
    writeln!(s, "| kernel, compiler | {}, {} |", m["kernel"].as_str().unwrap_or(""), m["rustc"].as_str().unwrap_or(""))?;
    writeln!(s, "| build | `--release` (opt-level 3, line tables only) |\n")?;
    writeln!(
        s,
        "Figures are **medians** over repeats, with the spread as (min–max, n). The machine is shared with other work, so single runs are noisy; \
         every ratio compares a case with its baseline measured **in the same run**, repeats interleaved (case, baseline, case, baseline…), and \
         each case runs in its own child process so peak RSS (`VmHWM`) belongs to that case alone.\n"
    )?;
    if let Some(notes) = results["plan"].as_array() {
        for n in notes {
            writeln!(s, "- {}", n.as_str().unwrap_or(""))?;
        }
        writeln!(s)?;
    }

    // ---------------------------------------------------------------- (a)
    let mixed_ours = matching(results, |c| c["kind"] == "parse_mixed" && c["mode"] == "ours");
    let mixed_bare = matching(results, |c| c["kind"] == "parse_mixed" && c["mode"] == "bare");
    let st_ours = matching(results, |c| c["kind"] == "parse_stream" && c["mode"] == "ours");
    let st_bare = matching(results, |c| c["kind"] == "parse_stream" && c["mode"] == "bare");
    let st_gen = matching(results, |c| c["kind"] == "parse_stream" && c["mode"] == "generator");
    if !mixed_ours.is_empty() || !st_ours.is_empty() {
        writeln!(s, "## (a) Parse + map throughput and peak memory (one core)\n")?;
        writeln!(
            s,
            "Our streaming RIV-TA parser (`parse_response_with`: namespace-aware quick-xml reader, limits, one item tree at a time, mapping into \
             canonical records) against a **bare `quick_xml::Reader` event loop** (`read_event_into_async`, every event dropped) over identical bytes. \
             Both run on a thread pinned to one CPU (`sched_setaffinity`).\n"
        )?;
        if let (Some(t), Some(b)) = (metric(&mixed_ours, "seconds"), metric(&mixed_bare, "seconds")) {
            let r0 = mixed_ours[0];
            writeln!(
                s,
                "**Mixed corpus**: {} patients, all four contracts per patient ({} documents, {:.0} MiB, {} records), rendered in memory by the sandbox journal, parsed document by document.\n",
                fmt_num(r0["case"]["patients"].as_f64().unwrap_or(0.0), 0),
                fmt_num(r0["documents"].as_f64().unwrap_or(0.0), 0),
                r0["bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                fmt_num(r0["records"].as_f64().unwrap_or(0.0), 0)
            )?;
            writeln!(s, "| | time (s) | records/s | MiB/s |\n|---|---|---|---|")?;
            writeln!(s, "| ours: parse + map | {} | {} | {} |", t.show(2, 1.0), metric(&mixed_ours, "records_per_second").map(|x| x.show(0, 1.0)).unwrap_or_default(), metric(&mixed_ours, "mib_per_second").map(|x| x.show(0, 1.0)).unwrap_or_default())?;
            writeln!(s, "| baseline: bare quick-xml | {} | – | {} |", b.show(2, 1.0), metric(&mixed_bare, "mib_per_second").map(|x| x.show(0, 1.0)).unwrap_or_default())?;
            if let Some(r) = paired_ratio(&mixed_ours, &mixed_bare, "seconds") {
                writeln!(s, "\nRatio ours / bare (wall time): **{}** (per-repeat pairs).", r.show(2, 1.0))?;
            }
            if let Some(r) = paired_ratio(&mixed_ours, &mixed_bare, "cpu_seconds") {
                writeln!(s, "Ratio ours / bare (CPU time, less sensitive to other load on the pinned core): **{}**.", r.show(2, 1.0))?;
            }
            one_core_target(&mut s, "Target ≥ 100,000 records/s on one core", &mixed_ours)?;
            if let Some(bc) = r0.get("records_by_contract") {
                writeln!(s, "Records by contract: {}.\n", bc.as_object().map(|o| o.iter().map(|(k, v)| format!("{k} {}", fmt_num(v.as_f64().unwrap_or(0.0), 0))).collect::<Vec<_>>().join(", ")).unwrap_or_default())?;
            }
        }
        if let (Some(t), Some(b)) = (metric(&st_ours, "seconds"), metric(&st_bare, "seconds")) {
            let r0 = st_ours[0];
            writeln!(
                s,
                "**One large document**: a single {} response of {:.2} GiB ({} records) streamed through an `AsyncBufRead` generator that cycles the items of \
                 {} patients ({:.1} MiB pool); the document is never in memory.\n",
                r0["case"]["contract"].as_str().unwrap_or(""),
                r0["bytes"].as_f64().unwrap_or(0.0) / 1073741824.0,
                fmt_num(r0["records"].as_f64().unwrap_or(0.0), 0),
                400,
                r0["pool_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            )?;
            writeln!(s, "| | time (s) | records/s | MiB/s | peak RSS (MiB) |\n|---|---|---|---|---|")?;
            let row = |name: &str, rs: &[&Value], tt: Stat| -> String {
                format!(
                    "| {name} | {} | {} | {} | {} |",
                    tt.show(2, 1.0),
                    metric(rs, "records_per_second").map(|x| x.show(0, 1.0)).unwrap_or_else(|| "–".into()),
                    metric(rs, "mib_per_second").map(|x| x.show(0, 1.0)).unwrap_or_default(),
                    metric(rs, "peak_rss_kb").map(|x| x.show(1, 1.0 / 1024.0)).unwrap_or_default()
                )
            };
            writeln!(s, "{}", row("ours: parse + map", &st_ours, t))?;
            writeln!(s, "{}", row("baseline: bare quick-xml", &st_bare, b))?;
            if let Some(g) = metric(&st_gen, "seconds") {
                // Zero-copy slices: draining 1 GiB is pointer arithmetic, so no throughput column.
                writeln!(s, "| generator alone | {} | – | – | {} |", g.show(3, 1.0), metric(&st_gen, "peak_rss_kb").map(|x| x.show(1, 1.0 / 1024.0)).unwrap_or_default())?;
            }
            if let Some(r) = paired_ratio(&st_ours, &st_bare, "seconds") {
                write!(s, "\nRatio ours / bare (time): **{}**", r.show(2, 1.0))?;
                if let Some(g) = metric(&st_gen, "seconds") {
                    write!(s, "; without the generator's own time: {:.2}", (t.median - g.median) / (b.median - g.median).max(1e-9))?;
                }
                writeln!(s, ".")?;
            }
            if let Some(rss) = metric(&st_ours, "peak_rss_kb") {
                let big = r0["bytes"].as_f64().unwrap_or(0.0) >= 1073741824.0;
                writeln!(
                    s,
                    "Target peak RSS < 200 MB for the 1 GB input: {} ({:.1} MiB{}).",
                    yes(rss.median / 1024.0 < 200.0),
                    rss.median / 1024.0,
                    if big { "" } else { "; this run's document is smaller than 1 GB" }
                )?;
            }
            if let Some(r) = paired_ratio(&st_ours, &st_bare, "cpu_seconds") {
                writeln!(s, "Ratio ours / bare (CPU time): **{}**.", r.show(2, 1.0))?;
            }
            one_core_target(&mut s, "Records/s on one core (target ≥ 100,000)", &st_ours)?;
        }
    }

    // ---------------------------------------------------------------- (b)
    let full = |b: &str| {
        let largest = runs(results)
            .iter()
            .filter(|r| full_here(&r["case"]) && r["case"]["backend"] == b)
            .filter_map(|r| r["case"]["contacts"].as_u64())
            .max();
        matching(results, move |c| full_here(c) && c["backend"] == b && Some(c["contacts"].as_u64().unwrap_or(0)) == largest)
    };
    let full_sqlite = full("sqlite");
    if !full_sqlite.is_empty() {
        let region = full_sqlite[0]["case"]["contacts"].as_u64().unwrap_or(0);
        let base = |mode: &str| matching(results, |c| is(c, "pipeline", "mode", mode) && c["contacts"] == region);
        let (fetch, source) = (base("fetch"), base("source"));
        let r0 = full_sqlite[0];
        writeln!(s, "## (b) A synthetic region into the outbox\n")?;
        writeln!(
            s,
            "The sandbox journal (HTTPS + mTLS on loopback, in the same process) serves a population of {} patients with {} care contacts, {} diagnoses, {} activities and {} observations. \
             The real daemon wiring (`SandboxEnv` config → `App::open` → `build_runtime`) runs the `{}` connector once (`run_connector`, manual run, no watermark): \
             engagement-index discovery, {} requests per patient ({}, {} patients in flight), \
             streaming parse, per-patient store transaction (documents encrypted, audit chain), then the PVK after-pull step (indicators from the stored records into the outbox).\n",
            fmt_num(r0["population"]["patients"].as_f64().unwrap_or(0.0), 0),
            fmt_num(r0["population"]["care_contacts"].as_f64().unwrap_or(0.0), 0),
            fmt_num(r0["population"]["diagnoses"].as_f64().unwrap_or(0.0), 0),
            fmt_num(r0["population"]["activities"].as_f64().unwrap_or(0.0), 0),
            fmt_num(r0["population"]["observations"].as_f64().unwrap_or(0.0), 0),
            r0["case"]["connector"].as_str().unwrap_or(""),
            (r0["journal_requests"].as_f64().unwrap_or(0.0) / r0["patients"].as_f64().unwrap_or(1.0)).round(),
            if r0["case"]["unit_filter"] == "response" {
                "care contacts and diagnoses for the connector's units, activities and observations once each without `careUnitId`, other units' items dropped on arrival: `unit_filter = \"response\"`"
            } else {
                "care contacts, diagnoses, activities and observations per unit"
            },
            r0["case"]["concurrency"]
        )?;
        writeln!(s, "Baselines in the same run: **fetch** = the same requests with the same mTLS client and concurrency, bodies read and dropped (journal + TLS + HTTP only); **source** = the RIV source alone (fetch + parse + join), batches dropped (no store).\n")?;
        writeln!(s, "| | time (s) | contacts stored | contacts/s | records/s | CPU s | peak RSS (MiB) |\n|---|---|---|---|---|---|---|")?;
        let row = |name: String, rs: &[&Value]| -> Option<String> {
            let t = metric(rs, "seconds")?;
            Some(format!(
                "| {name} | {} | {} | {} | {} | {} | {} |",
                t.show(1, 1.0),
                metric(rs, "contacts").map(|x| fmt_num(x.median, 0)).unwrap_or_else(|| "–".into()),
                metric(rs, "contacts_per_second").map(|x| x.show(0, 1.0)).unwrap_or_default(),
                metric(rs, "records_per_second").map(|x| x.show(0, 1.0)).unwrap_or_else(|| "–".into()),
                metric(rs, "cpu_seconds").map(|x| fmt_num(x.median, 0)).unwrap_or_default(),
                metric(rs, "peak_rss_kb").map(|x| x.show(0, 1.0 / 1024.0)).unwrap_or_default()
            ))
        };
        let pg_full = full("postgres");
        let pg_name = format!("full, PostgreSQL ({} contacts)", fmt_num(pg_full.first().and_then(|r| r["case"]["contacts"].as_f64()).unwrap_or(0.0), 0));
        for (name, rs) in [("full, SQLite".to_string(), full_sqlite.clone()), (pg_name, pg_full), ("baseline: source (fetch + parse)".into(), source.clone()), ("baseline: fetch only".into(), fetch.clone())] {
            if let Some(line) = row(name, &rs) {
                writeln!(s, "{line}")?;
            }
        }
        writeln!(s)?;
        for (name, rs) in [("SQLite", full_sqlite.clone()), ("PostgreSQL", full("postgres"))] {
            if rs.is_empty() {
                continue;
            }
            let t = metric(&rs, "seconds").expect("seconds");
            let ps = metric(&rs, "pull_store_seconds");
            let ap = metric(&rs, "after_pull_seconds");
            write!(s, "- {name}: {} s", fmt_num(t.median, 1))?;
            if let (Some(p), Some(a)) = (ps, ap) {
                write!(s, " = pull + store {} s + PVK after-pull {} s", fmt_num(p.median, 1), fmt_num(a.median, 1))?;
            }
            if let Some(r) = paired_ratio(&rs, &fetch, "seconds") {
                write!(s, "; ratio to fetch-only {}", r.show(2, 1.0))?;
            }
            if let Some(r) = paired_ratio(&rs, &source, "seconds") {
                write!(s, "; ratio to source-only {}", r.show(2, 1.0))?;
            }
            let contacts = metric(&rs, "contacts").map(|c| c.median).unwrap_or(0.0);
            writeln!(s, ". Target ≤ 60 s for ≥ 1,000,000 contacts: {}.", if contacts >= 1e6 { yes(t.median <= 60.0) } else { "(not a full-size run)" })?;
        }
        writeln!(s)?;
        // Where the time goes: full vs source-only vs fetch-only at the size that has all three.
        let sizes: Vec<u64> = matching(results, |c| is(c, "pipeline", "mode", "source")).iter().filter_map(|r| r["case"]["contacts"].as_u64()).collect();
        if let Some(n) = sizes.iter().max() {
            let at = |mode: &str| matching(results, |c| is(c, "pipeline", "mode", mode) && c["sandbox"].is_null() && c["backend"] == "sqlite" && c["contacts"] == *n);
            let (f, so, fe) = (at("full"), at("source"), at("fetch"));
            if let (Some(tf), Some(ts), Some(tx)) = (metric(&f, "seconds"), metric(&so, "seconds"), metric(&fe, "seconds")) {
                let cpu = |rs: &[&Value]| metric(rs, "cpu_seconds").map(|x| x.median).unwrap_or(0.0);
                writeln!(s, "Split at {} contacts (SQLite, same run):\n", fmt_num(*n as f64, 0))?;
                writeln!(s, "| stage | wall s | CPU s (whole process) | CPU s added by the stage |\n|---|---|---|---|")?;
                writeln!(s, "| fetch only (journal render + TLS + HTTP, both sides) | {} | {} | {} |", fmt_num(tx.median, 1), fmt_num(cpu(&fe), 1), fmt_num(cpu(&fe), 1))?;
                writeln!(s, "| + parse + map + join (source only) | {} | {} | {} |", fmt_num(ts.median, 1), fmt_num(cpu(&so), 1), fmt_num(cpu(&so) - cpu(&fe), 1))?;
                writeln!(s, "| + pipeline + store + PVK after-pull (full) | {} | {} | {} |", fmt_num(tf.median, 1), fmt_num(cpu(&f), 1), fmt_num(cpu(&f) - cpu(&so), 1))?;
                writeln!(s, "\nRatios (time): full / fetch-only **{:.2}**, full / source-only **{:.2}**.\n", tf.median / tx.median, tf.median / ts.median)?;
            }
        }
    }

    // ---------------------------------------------------------------- (c)
    let eng = |b: &str| matching(results, move |c| c["kind"] == "delivery" && c["mode"] == "engine" && c["backend"] == b);
    let bare = |b: &str| matching(results, move |c| c["kind"] == "delivery" && c["mode"] == "bare" && c["backend"] == b);
    if !eng("sqlite").is_empty() {
        let c0 = &eng("sqlite")[0]["case"];
        writeln!(s, "## (c) Delivery throughput to the Stratum emulator\n")?;
        writeln!(
            s,
            "{} FVPat registrations queued in the outbox (untimed), then the delivery engine (`DeliveryEngine::run`, {} workers × batch {}: claim with lease, \
             send through the Stratum client with its per-unit sessions over mTLS, finish with attempt rows and audit events) until all are delivered. \
             Baseline in the same run: a bare reqwest loop POSTing the same payloads with the same mTLS, one cookie session per unit, {} in flight (= workers × batch). \
             The register's rate limit is opened (`rate_limit_per_second` = 1,000,000; the shipped 200/s is a politeness limit for the real register).\n",
            fmt_num(c0["records"].as_f64().unwrap_or(0.0), 0),
            c0["workers"],
            c0["batch_size"],
            c0["workers"].as_u64().unwrap_or(0) * c0["batch_size"].as_u64().unwrap_or(0)
        )?;
        writeln!(s, "| backend | engine registrations/s | bare loop registrations/s | ratio engine / bare | target ≥ 2,000/s |\n|---|---|---|---|---|")?;
        for (b, name) in [("sqlite", "SQLite"), ("postgres", "PostgreSQL")] {
            let (e, x) = (eng(b), bare(b));
            let Some(er) = metric(&e, "registrations_per_second") else { continue };
            writeln!(
                s,
                "| {name} | {} | {} | {} | {} |",
                er.show(0, 1.0),
                metric(&x, "registrations_per_second").map(|v| v.show(0, 1.0)).unwrap_or_default(),
                paired_ratio(&e, &x, "registrations_per_second").map(|v| v.show(2, 1.0)).unwrap_or_default(),
                yes(er.median >= 2000.0)
            )?;
        }
        writeln!(s)?;
    }

    // ---------------------------------------------------------------- (d)
    let rows = growth_rows(results);
    if rows.len() > 1 {
        writeln!(s, "## (d) Growth\n")?;
        writeln!(s, "Case (b) at growing population sizes (the full chain, one fresh process and database each). Peak RSS includes the in-process sandbox journal.\n")?;
        writeln!(s, "![growth](docs/bench-growth.png)\n")?;
        writeln!(s, "| backend | contacts | time (s) | contacts/s | peak RSS (MiB) |\n|---|---|---|---|---|")?;
        for (b, c, t, m, r) in &rows {
            writeln!(s, "| {b} | {} | {} | {} | {} |", fmt_num(*c as f64, 0), t.show(1, 1.0), r.show(0, 1.0), m.show(0, 1.0 / 1024.0))?;
        }
        writeln!(s)?;
    }
    let ratios = ratios_markdown(&runs(results));
    if !ratios.is_empty() {
        writeln!(s, "## Ratios to the baselines (issue 18)\n\n{ratios}")?;
    }
    s.push_str(&std::fs::read_to_string("docs/bench-notes.md").unwrap_or_default());
    std::fs::write(path, s)?;
    Ok(())
}

/// The issue-18 ratios, each between cases measured in the same run (one `scripts/bench` run,
/// or one `scripts/bench-cases` invocation): full pull ÷ fetch-only, delivery engine ÷ bare loop,
/// peak RSS at the largest region ÷ at the size nearest 100k, and parse + map per core. Runs
/// are the result objects (each with its `case`); medians where a case repeats.
pub fn ratios_markdown(rs: &[&Value]) -> String {
    let med = |v: Vec<f64>| Stat::of(v).map(|s| s.median);
    let get = |r: &Value, k: &str| r.get(k).and_then(Value::as_f64);
    let mut lines = vec![];
    // Region into the outbox vs fetch-only, by backend and size.
    let mut sizes: Vec<(String, u64)> = rs
        .iter()
        .filter(|r| full_here(&r["case"]))
        .filter_map(|r| Some((r["case"]["backend"].as_str()?.to_string(), r["case"]["contacts"].as_u64()?)))
        .collect();
    sizes.sort();
    sizes.dedup();
    for (b, n) in &sizes {
        let full = med(rs.iter().filter(|r| full_here(&r["case"]) && r["case"]["backend"] == b.as_str() && r["case"]["contacts"] == *n).filter_map(|r| get(r, "seconds")).collect());
        // The baseline fetches what the case fetched: same size, same `unit_filter` (default "request").
        let filter = |r: &Value| r["case"]["unit_filter"].as_str().unwrap_or("request").to_string();
        let case_filter = rs.iter().find(|r| full_here(&r["case"]) && r["case"]["backend"] == b.as_str() && r["case"]["contacts"] == *n).map(|r| filter(r));
        let fetch = med(
            rs.iter()
                .filter(|r| r["case"]["kind"] == "pipeline" && r["case"]["mode"] == "fetch" && r["case"]["contacts"] == *n && Some(filter(r)) == case_filter)
                .filter_map(|r| get(r, "seconds"))
                .collect(),
        );
        if let (Some(f), Some(x)) = (full, fetch) {
            lines.push(format!("| region into the outbox, {b}, {} contacts: full ÷ fetch-only | {:.2} ({:.1} s ÷ {:.1} s) | ≤ 1.5 | {} |", fmt_num(*n as f64, 0), f / x, f, x, yes(f / x <= 1.5)));
        }
    }
    // Delivery engine vs bare loop.
    for b in ["sqlite", "postgres"] {
        let of = |mode: &str| med(rs.iter().filter(|r| r["case"]["kind"] == "delivery" && r["case"]["mode"] == mode && r["case"]["backend"] == b).filter_map(|r| get(r, "registrations_per_second")).collect());
        if let (Some(e), Some(x)) = (of("engine"), of("bare")) {
            lines.push(format!("| delivery, {b}: engine ÷ bare loop | {:.2} ({:.0}/s ÷ {:.0}/s) | ≥ 0.5 | {} |", e / x, e, x, yes(e / x >= 0.5)));
        }
    }
    // Peak RSS: the largest full region run ÷ the one nearest 100k contacts, per backend and
    // per placement of the sandbox (in the measured process, or in its own: the daemon alone).
    for b in ["sqlite", "postgres"] {
        for (placement, label) in [(None, "sandbox in the process"), (Some("process"), "daemon alone, sandbox in its own process")] {
            let runs: Vec<&&Value> = rs
                .iter()
                .filter(|r| r["case"]["kind"] == "pipeline" && r["case"]["mode"] == "full" && r["case"]["backend"] == b && r["case"]["sandbox"].as_str() == placement)
                .collect();
            let mut ns: Vec<u64> = runs.iter().filter_map(|r| r["case"]["contacts"].as_u64()).collect();
            ns.sort_unstable();
            ns.dedup();
            let (Some(big), Some(small)) = (ns.iter().max().copied(), ns.iter().min_by_key(|n| n.abs_diff(100_000)).copied()) else { continue };
            if big == small {
                continue;
            }
            let rss = |n: u64| med(runs.iter().filter(|r| r["case"]["contacts"] == n).filter_map(|r| get(r, "peak_rss_kb")).collect());
            if let (Some(x), Some(y)) = (rss(big), rss(small)) {
                let mib = x / 1024.0;
                lines.push(format!(
                    "| peak RSS, {b} ({label}): {} ÷ {} contacts | {:.2} ({:.0} MiB ÷ {:.0} MiB) | ≤ 1.3 and ≤ 300 MiB | {} |",
                    fmt_num(big as f64, 0),
                    fmt_num(small as f64, 0),
                    x / y,
                    mib,
                    y / 1024.0,
                    yes(x / y <= 1.3 && mib <= 300.0)
                ));
            }
        }
    }
    // Parse + map on one core.
    let per_core = med(rs.iter().filter(|r| r["case"]["kind"] == "parse_mixed" && r["case"]["mode"] == "ours").filter_map(|r| Some(get(r, "records")? / get(r, "cpu_seconds")?)).collect());
    if let Some(p) = per_core {
        lines.push(format!("| parse + map, mixed corpus: records per CPU second | {} | ≥ 100,000 | {} |", fmt_num(p, 0), yes(p >= 100_000.0)));
    }
    // Sealing a document: the current format against v2 (no target; it explains the store's size).
    let seal = |mode: &str, k: &str| med(rs.iter().filter(|r| r["case"]["kind"] == "seal" && r["case"]["mode"] == mode).filter_map(|r| get(r, k)).collect());
    if let (Some(cb), Some(vb), Some(cs), Some(vs)) = (seal("current", "stored_bytes_per_record"), seal("v2", "stored_bytes_per_record"), seal("current", "seal_us_per_record"), seal("v2", "seal_us_per_record")) {
        lines.push(format!("| sealing a document, current ÷ v2: stored bytes; CPU to seal | {:.2} ({cb:.0} ÷ {vb:.0} bytes); {:.2} ({cs:.2} ÷ {vs:.2} µs) | – | – |", cb / vb, cs / vs));
    }
    if lines.is_empty() {
        return String::new();
    }
    format!("| ratio (same run) | value | target | met |\n|---|---|---|---|\n{}\n", lines.join("\n"))
}

/// The one-core throughput target line of (a): met when the wall or the CPU rate reaches it.
fn one_core_target(s: &mut String, label: &str, rs: &[&Value]) -> std::fmt::Result {
    let per_cpu = per_cpu_second(rs);
    if let Some(rps) = metric(rs, "records_per_second") {
        writeln!(
            s,
            "{label}: {} ({} per wall second; {} per CPU second).\n",
            yes(rps.median.max(per_cpu.map(|p| p.median).unwrap_or(0.0)) >= 100_000.0),
            fmt_num(rps.median, 0),
            per_cpu.map(|p| p.show(0, 1.0)).unwrap_or_default()
        )?;
    }
    Ok(())
}

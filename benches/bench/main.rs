//! registerbrygga benchmarks (issue #8 item 4; speed targets of #3 and #5).
//!
//! One binary, two roles. `run` is the orchestrator: it spawns this same executable once per
//! measurement (`child <case as JSON>`), so every case gets a fresh process and its own peak RSS
//! (VmHWM) — a baseline never inherits the allocations of the case before it. The orchestrator
//! collects the children's JSON lines, takes medians over repeats, writes the raw results and
//! regenerates BENCHMARKS.md.
//!
//! Run it through `scripts/bench` (release build, PostgreSQL cluster, plot), or directly:
//! `cargo bench --bench bench -- run [--quick] [--only a,b,c,d] [--out DIR] [--contacts N] [--unit-filter request|response]`.

mod cases;
mod delivery;
mod parse;
mod pipeline;
mod report;
mod seal;

use anyhow::{bail, Context, Result};
use cases::Case;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

/// The line prefix a child prints its result after (everything else on stdout is ignored).
const RESULT_PREFIX: &str = "BENCH_RESULT ";

fn main() {
    // `cargo bench` passes `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let code = match real_main(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("bench: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn real_main(args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("child") => {
            // As the daemon does (src/main.rs), so the figures are the daemon's.
            registerbrygga::runtime::limit_malloc_arenas();
            let spec = args.get(1).context("child needs a case")?;
            let case: Case = serde_json::from_str(spec).context("bad case JSON")?;
            let mut out = cases::run_case(&case)?;
            out["case"] = serde_json::to_value(&case)?;
            out["peak_rss_kb"] = Value::from(peak_rss_kb());
            println!("{RESULT_PREFIX}{}", serde_json::to_string(&out)?);
            Ok(())
        }
        Some("sandbox") => {
            // A pipeline case's sandbox in a process of its own (`"sandbox": "process"`).
            let spec: Value = serde_json::from_str(args.get(1).context("sandbox needs a spec")?)?;
            cases::runtime()?.block_on(pipeline::serve_sandbox(&spec))
        }
        Some("run") => run(Options::parse(&args[1..])?),
        Some("report") => {
            // Regenerate BENCHMARKS.md from a results file without measuring again.
            let file = args.get(1).context("report needs a results JSON file")?;
            let results: Value = serde_json::from_slice(&std::fs::read(file)?)?;
            report::write_markdown(&results, &PathBuf::from("BENCHMARKS.md"))
        }
        Some("ratios") => {
            // The ratios of the result lines of one `scripts/bench-cases` invocation.
            let file = args.get(1).context("ratios needs a JSON-lines file")?;
            let lines: Vec<Value> = std::fs::read_to_string(file)?.lines().filter(|l| !l.trim().is_empty()).map(serde_json::from_str).collect::<Result<_, _>>()?;
            print!("{}", report::ratios_markdown(&lines.iter().collect::<Vec<_>>()));
            Ok(())
        }
        _ => {
            eprintln!("usage: bench run [--quick] [--only a,b,c,d] [--out DIR] [--repeats N] [--contacts N] [--concurrency N] [--unit-filter request|response]\n       bench child '<case JSON>'\n       bench report RESULTS.json\n       bench ratios RESULTS.jsonl");
            bail!("no command")
        }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub only: Vec<String>,
    pub out: PathBuf,
    pub repeats: Option<usize>,
    pub pg_url: Option<String>,
    pub command: String,
    /// (b): region size in contacts instead of the default (1M; 20k with --quick).
    pub contacts: Option<u64>,
    /// (b) and (d): the RIV source's `unit_filter` ("request" | "response").
    pub unit_filter: Option<String>,
    /// (b) and (d): patients fetched in parallel (default 8, the shipped setting).
    pub concurrency: Option<usize>,
}

impl Options {
    fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            quick: false,
            only: vec![],
            out: PathBuf::from("target/bench-results"),
            repeats: None,
            pg_url: std::env::var("RB_BENCH_PG_URL").ok().filter(|s| !s.is_empty()),
            command: std::env::var("RB_BENCH_COMMAND").unwrap_or_else(|_| "scripts/bench".into()),
            contacts: None,
            unit_filter: None,
            concurrency: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => o.quick = true,
                "--only" => o.only = it.next().context("--only needs a list")?.split(',').map(|s| s.trim().to_string()).collect(),
                "--out" => o.out = PathBuf::from(it.next().context("--out needs a folder")?),
                "--repeats" => o.repeats = Some(it.next().context("--repeats needs a number")?.parse()?),
                "--contacts" => o.contacts = Some(it.next().context("--contacts needs a number")?.parse()?),
                "--concurrency" => o.concurrency = Some(it.next().context("--concurrency needs a number")?.parse()?),
                "--unit-filter" => match it.next().map(String::as_str) {
                    Some(u @ ("request" | "response")) => o.unit_filter = Some(u.to_string()),
                    _ => bail!("--unit-filter takes request or response"),
                },
                other => bail!("unknown option {other}"),
            }
        }
        Ok(o)
    }

    pub fn wants(&self, part: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| p == part)
    }
}

/// Run one case in a fresh child process; its JSON result.
pub fn spawn_case(case: &Case) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let spec = serde_json::to_string(case)?;
    eprintln!("bench: {}", case.label());
    let started = Instant::now();
    let mut child = Command::new(exe).arg("child").arg(&spec).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn()?;
    let mut result = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        if let Some(j) = line.strip_prefix(RESULT_PREFIX) {
            result = Some(serde_json::from_str::<Value>(j)?);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("case {} failed ({status})", case.label());
    }
    let r = result.with_context(|| format!("case {} printed no result", case.label()))?;
    eprintln!("bench:   done in {:.1}s: {}", started.elapsed().as_secs_f64(), cases::summary_line(&r));
    Ok(r)
}

fn run(o: Options) -> Result<()> {
    std::fs::create_dir_all(&o.out)?;
    let started = chrono::Utc::now();
    let mut results = serde_json::json!({
        "started_at": started.to_rfc3339(),
        "quick": o.quick,
        "command": if o.quick { format!("{} --quick", o.command) } else { o.command.clone() },
        "machine": report::machine(),
        "postgres": o.pg_url.is_some(),
    });
    let plan = cases::plan(&o)?;
    results["plan"] = serde_json::to_value(&plan.notes)?;
    let mut runs: Vec<Value> = vec![];
    // Interleave repeats (case A, B, A, B…) so a burst of load from other users of the machine
    // hits a case and its baseline alike rather than all repeats of one.
    for group in &plan.groups {
        for rep in 0..group.repeats {
            for case in &group.cases {
                match spawn_case(case) {
                    Ok(mut r) => {
                        r["group"] = Value::from(group.name.clone());
                        r["repeat"] = Value::from(rep);
                        runs.push(r);
                    }
                    Err(e) => {
                        eprintln!("bench: {e:#}");
                        runs.push(serde_json::json!({"group": group.name, "repeat": rep, "case": case, "error": format!("{e:#}")}));
                    }
                }
                // Raw results are written as they come, so a long run that dies keeps what it had.
                results["runs"] = Value::from(runs.clone());
                std::fs::write(o.out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
            }
        }
    }
    results["finished_at"] = Value::from(chrono::Utc::now().to_rfc3339());
    results["summary"] = report::summarise(&results);
    std::fs::write(o.out.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    report::write_growth_csv(&results, &o.out.join("growth.csv"))?;
    if !o.quick {
        report::write_markdown(&results, &PathBuf::from("BENCHMARKS.md"))?;
        eprintln!("bench: wrote BENCHMARKS.md and {}", o.out.join("results.json").display());
    } else {
        report::write_markdown(&results, &o.out.join("BENCHMARKS-quick.md"))?;
        eprintln!("bench: quick run; wrote {}", o.out.join("BENCHMARKS-quick.md").display());
    }
    Ok(())
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kb() -> u64 {
    status_kb("VmHWM:")
}

pub fn rss_kb() -> u64 {
    status_kb("VmRSS:")
}

fn status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with(field)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Pin the calling thread to one CPU ("one core" measurements). Best effort.
pub fn pin_to_one_cpu() -> Option<usize> {
    // SAFETY: plain libc calls on a zeroed cpu_set_t owned by this frame.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return None;
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        (libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0).then_some(cpu as usize)
    }
}

/// CPU time (user + system) this process has used so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(u.ru_utime) + t(u.ru_stime)
    }
}

//! (c) Delivery throughput: the delivery engine draining the outbox into the Stratum emulator,
//! against a bare reqwest loop POSTing the same payloads with the same TLS and concurrency.

use crate::cases::{DeliveryMode, PG, SQLITE};
use crate::cpu_seconds;
use crate::pipeline::{bench_dir, fresh_pg_url};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use registerbrygga::config::{Backend, CircuitSettings, DeliverySettings, RegisterSettings, Secret, StoreSettings, UnitBinding};
use registerbrygga::crypto::Cipher;
use registerbrygga::delivery::{DeliveryEngine, Lane};
use registerbrygga::sandbox::stratum::{self as emulator, EmulatorOptions};
use registerbrygga::sandbox::tls::{sandbox_client_settings, CertSet};
use registerbrygga::sinks::stratum::StratumClient;
use registerbrygga::store::{ChangeSet, OutboxChange, RecordKey, Store};
use serde_json::{json, Map, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const UNITS: [(&str, &str); 4] = [("SE2321000156-FT01", "1701"), ("SE2321000156-FT02", "1702"), ("SE2321000156-FT03", "1703"), ("SE2321000156-FT04", "1704")];

/// A valid personnummer for index `i` (unique for the sizes used here).
fn pnr(i: usize) -> String {
    let body = format!("{:02}{:02}{:02}{:03}", 30 + (i / 302_400) % 60, 1 + (i / 25_200) % 12, 1 + (i / 900) % 28, 100 + i % 900);
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("19{body}{}", registerbrygga::model::luhn_check_digit(&digits))
}

/// An FVPat registration with every mandatory answer.
fn payload(i: usize) -> Map<String, Value> {
    let v = json!({
        "SubjectKey": pnr(i), "EventDate": "2026-03-02", "FV_PainNRS": (i % 11) as i64,
        "FV_EQ5D_Mobility": 2, "FV_EQ5D_SelfCare": 1, "FV_EQ5D_UsualActivities": 2,
        "FV_EQ5D_PainDiscomfort": 3, "FV_EQ5D_AnxietyDepression": 1, "FV_EQVAS": 70,
        "FV_WantsSurgery": false, "FV_MainJoint": 2
    });
    v.as_object().expect("object").clone()
}

fn upsert(i: usize) -> OutboxChange {
    let p = payload(i);
    let unit = UNITS[i % 4].0;
    let mut lookup = Map::new();
    lookup.insert("SubjectKey".into(), p["SubjectKey"].clone());
    lookup.insert("EventDate".into(), p["EventDate"].clone());
    OutboxChange::Upsert {
        key: RecordKey {
            idem_key: format!("sar|{unit}|pk{i}|knee|FVPat"),
            register: "sar".into(),
            connector: "artrosregistret".into(),
            unit: unit.into(),
            form: "FVPat".into(),
            subject: Some(format!("pk{i}")),
        },
        payload: p,
        lookup,
        correlation_id: "bench".into(),
        detail: json!({}),
    }
}

async fn open_store(backend: &str, dir: &std::path::Path) -> Result<Store> {
    let cipher = Cipher::new(&[[7u8; 32]])?;
    let settings = match backend {
        SQLITE => StoreSettings { backend: Backend::Sqlite, sqlite_path: dir.join("bench.db"), postgres_url: None, max_connections: 8 },
        PG => {
            std::env::set_var("RB_BENCH_STORE_URL", fresh_pg_url("delivery").await?);
            StoreSettings { backend: Backend::Postgres, sqlite_path: Default::default(), postgres_url: Some(Secret::from_env("RB_BENCH_STORE_URL")), max_connections: 8 }
        }
        other => bail!("unknown backend {other}"),
    };
    Store::open(&settings, cipher).await
}

pub async fn run(backend: &str, records: usize, workers: usize, batch_size: u32, mode: DeliveryMode) -> Result<Value> {
    let dir = bench_dir("delivery")?;
    let certs = CertSet::ensure(&dir.join("certs"))?;
    let emu = emulator::start(EmulatorOptions::new(certs.clone())).await?;
    let key_file = dir.join("apikey");
    std::fs::write(&key_file, emu.api_key())?;
    let settings = RegisterSettings {
        base_url: emu.base_url(),
        register_id: 104,
        api_key: Some(Secret::from_file(&key_file)),
        tls: sandbox_client_settings(&certs),
        units: UNITS.iter().map(|(h, c)| UnitBinding { hsa_id: h.to_string(), unit_code: c.to_string(), name: None }).collect(),
        timeout_seconds: 30,
        // The shipped default (200/s) is a politeness limit for the real register; the benchmark
        // measures what the engine can do, so the limiter is opened wide.
        rate_limit_per_second: 1_000_000,
        circuit: CircuitSettings { failure_threshold: 1_000_000, open_seconds: 1, ..Default::default() },
        ..Default::default()
    };
    let concurrency = workers * batch_size as usize;
    let mut out = match mode {
        DeliveryMode::Engine => {
            let store = open_store(backend, &dir).await?;
            for chunk in (0..records).collect::<Vec<_>>().chunks(1000) {
                store.apply(ChangeSet { outbox: chunk.iter().map(|i| upsert(*i)).collect(), ..Default::default() }).await?;
            }
            let client = Arc::new(StratumClient::new("sar", &settings, Some(store.clone()))?);
            client.load_metadata().await?;
            let ds = DeliverySettings { enabled: true, workers, batch_size, lease_seconds: 120, heartbeat_seconds: 30, rescue_interval_seconds: 30, poll_interval_ms: 20 };
            let engine = Arc::new(DeliveryEngine::new(store.clone(), vec![Lane::new("sar", client, settings.clone())], ds, "bench"));
            let (stop, rx) = tokio::sync::watch::channel(false);
            let cpu0 = cpu_seconds();
            let t = Instant::now();
            let task = tokio::spawn(engine.clone().run(rx, Duration::from_secs(10)));
            let c = engine.counters.clone();
            let done = || c.delivered.load(Ordering::Relaxed) + c.rejected.load(Ordering::Relaxed) + c.dead.load(Ordering::Relaxed);
            while done() < records as u64 {
                if t.elapsed() > Duration::from_secs(900) {
                    bail!("delivery did not finish: {} of {records}", done());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu0;
            let _ = stop.send(true);
            task.await??;
            let delivered = c.delivered.load(Ordering::Relaxed);
            let retried = c.retried.load(Ordering::Relaxed);
            let posted = emu.counts().total().post;
            store.close().await;
            if delivered != records as u64 || posted != records as u64 {
                bail!("delivered {delivered}, emulator holds {posted}, expected {records}");
            }
            json!({"seconds": secs, "cpu_seconds": cpu, "delivered": delivered, "retried": retried, "registrations_per_second": delivered as f64 / secs})
        }
        DeliveryMode::Bare => {
            let meta = emulator::contract_registers().into_iter().find(|m| m.register.register_id == 104).context("register 104")?;
            let form_id = meta.form("FVPat").context("FVPat")?.form_id;
            let api = format!("{}/stratum/api", emu.base_url());
            let key = emu.api_key();
            let payloads: Vec<Value> = (0..records).map(|i| Value::Object(payload(i))).collect();
            let cpu0 = cpu_seconds();
            let t = Instant::now();
            // One client (own cookie jar and pool) per unit with its context selected, as the
            // Stratum client does.
            let mut clients = vec![];
            for (_, code) in UNITS {
                let http = registerbrygga::sandbox::tls::http_client(&settings.tls, Duration::from_secs(30), true)?;
                let ctxs: Value = http.get(format!("{api}/authentication/contexts")).query(&[("apikey", &key)]).send().await?.json().await?;
                let id = ctxs["data"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["Unit"]["UnitCode"].as_str() == Some(code) || c["Unit"]["UnitCode"].as_i64().map(|n| n.to_string()).as_deref() == Some(code))
                    .and_then(|c| c["ContextID"].as_u64())
                    .context("no context for unit")?;
                let r = http.put(format!("{api}/authentication/context")).query(&[("apikey", &key)]).json(&json!({"Context": {"ContextID": id}})).send().await?;
                if !r.status().is_success() {
                    bail!("context selection answered {}", r.status());
                }
                clients.push(http);
            }
            let url = format!("{api}/registrations/form/{form_id}");
            let sends = futures::stream::iter(0..records)
                .map(|i| {
                    let (http, url, key, body) = (&clients[i % 4], &url, &key, &payloads[i]);
                    async move {
                        let r = http.post(url).query(&[("apikey", key)]).json(body).send().await?;
                        let ok = r.status().is_success();
                        let _ = r.bytes().await?;
                        Ok::<_, anyhow::Error>(ok)
                    }
                })
                .buffer_unordered(concurrency.max(1));
            let results: Vec<Result<bool>> = sends.collect().await;
            let secs = t.elapsed().as_secs_f64();
            let ok = results.into_iter().filter(|r| matches!(r, Ok(true))).count();
            if ok != records {
                bail!("bare loop: {ok} of {records} accepted");
            }
            json!({"seconds": secs, "cpu_seconds": cpu_seconds() - cpu0, "delivered": ok, "registrations_per_second": ok as f64 / secs})
        }
    };
    out["concurrency"] = json!(concurrency);
    emu.shutdown().await;
    Ok(out)
}

//! The sandbox journal (issue #3, producer half): schema conformance of every response over real
//! mTLS HTTP, determinism, the population's shape, ground truth against the documents, the
//! engagement index's paging and change detection, mutations, fault injection, the platform's
//! request checks and the refusal of a client without a certificate.

use chrono::NaiveDate;
use registerbrygga::model::{IdKind, OID_HSA, OID_KVA};
use registerbrygga::sandbox::journal::{
    archetype, render_patient, AnswerValue, Condition, Contract, Faults, JournalHandle, JournalOptions, JournalServer, Population,
    PopulationSpec, SarForm, SharedPopulation, VisitSpec, NATIONAL_LOGICAL_ADDRESS,
};
use registerbrygga::sandbox::tls::{http_client, sandbox_client_settings, CertSet};
use registerbrygga::sandbox::vocabulary::{self as vocab, act, answer, obs, status, LOCAL_TERMS};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

fn spec(seed: u64, patients: usize) -> PopulationSpec {
    PopulationSpec::new(seed, patients, today())
}

struct Sandbox {
    _dir: tempfile::TempDir,
    certs: CertSet,
    pop: SharedPopulation,
    server: JournalHandle,
    client: reqwest::Client,
}

async fn sandbox(spec: PopulationSpec, options: JournalOptions) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let certs = CertSet::ensure(dir.path()).unwrap();
    let pop = Arc::new(Population::generate(&spec));
    let server = JournalServer::start_with(pop.clone(), &certs, "127.0.0.1:0".parse().unwrap(), options).await.unwrap();
    let client = http_client(&sandbox_client_settings(&certs), Duration::from_secs(20), false).unwrap();
    Sandbox { _dir: dir, certs, pop, server, client }
}

/// Optional request filters.
#[derive(Clone, Default)]
struct Filter {
    units: Vec<String>,
    window: Option<(NaiveDate, NaiveDate)>,
}

fn d8(d: NaiveDate) -> String {
    d.format("%Y%m%d").to_string()
}

/// The request element (standalone: it declares its own namespaces, so it validates alone).
fn request_body(c: Contract, id: &str, oid: &str, f: &Filter) -> String {
    let ns = c.responder_ns();
    let core = c.core_ns();
    match c {
        Contract::GetCareContacts | Contract::GetDiagnosis => {
            let units: String = f.units.iter().map(|u| format!("<careUnitHSAId>{u}</careUnitHSAId>")).collect();
            let tag = if c == Contract::GetCareContacts { "datePeriod" } else { "timePeriod" };
            let period = f.window.map(|(a, b)| format!("<{tag}><c:start>{}</c:start><c:end>{}</c:end></{tag}>", d8(a), d8(b))).unwrap_or_default();
            format!(
                "<{n} xmlns=\"{ns}\" xmlns:c=\"{core}\">{units}<patientId><c:id>{id}</c:id><c:type>{oid}</c:type></patientId>{period}</{n}>",
                n = c.name()
            )
        }
        Contract::GetActivities | Contract::GetObservations => {
            let time = f.window.map(|(a, b)| format!("<time><c:start>{}000000</c:start><c:end>{}235959</c:end></time>", d8(a), d8(b))).unwrap_or_default();
            let unit = f.units.first().map(|u| format!("<careUnitId><c:root>{OID_HSA}</c:root><c:extension>{u}</c:extension></careUnitId>")).unwrap_or_default();
            format!(
                "<{n} xmlns=\"{ns}\" xmlns:c=\"{core}\"><patientId><c:root>{oid}</c:root><c:extension>{id}</c:extension></patientId>{time}{unit}<interactionAgreementId>{}</interactionAgreementId></{n}>",
                uuid::Uuid::new_v4(),
                n = c.name()
            )
        }
        Contract::GetUpdates => unreachable!(),
    }
}

fn updates_body(domain: &str, since: &str, after: Option<&str>) -> String {
    let after = after.map(|a| format!("<registeredResidentLastFetched>{a}</registeredResidentLastFetched>")).unwrap_or_default();
    format!(
        "<GetUpdates xmlns=\"{}\"><serviceDomain>{domain}</serviceDomain><timeStamp>{since}</timeStamp>{after}</GetUpdates>",
        Contract::GetUpdates.responder_ns()
    )
}

fn envelope(logical_address: &str, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
         xmlns:itr=\"urn:riv:itintegration:registry:1\"><soapenv:Header><itr:LogicalAddress>{logical_address}</itr:LogicalAddress>\
         </soapenv:Header><soapenv:Body>{body}</soapenv:Body></soapenv:Envelope>"
    )
}

impl Sandbox {
    async fn post_raw(&self, c: Contract, soap_action: Option<&str>, envelope: String) -> (u16, String) {
        let mut req = self.client.post(self.server.url(c)).header("content-type", "text/xml; charset=utf-8");
        if let Some(a) = soap_action {
            req = req.header("SOAPAction", format!("\"{a}\""));
        }
        let resp = req.body(envelope).send().await.expect("the sandbox journal answers");
        let status = resp.status().as_u16();
        (status, resp.text().await.unwrap())
    }

    async fn post(&self, c: Contract, body: &str) -> (u16, String) {
        self.post_raw(c, Some(&c.soap_action()), envelope(NATIONAL_LOGICAL_ADDRESS, body)).await
    }

    /// A patient's response to a clinical contract; asserts HTTP 200.
    async fn fetch(&self, c: Contract, patient: usize, f: &Filter) -> String {
        let id = self.pop.patient_id(patient);
        let (status, text) = self.post(c, &request_body(c, id.raw(), id.oid(), f)).await;
        assert_eq!(status, 200, "{c:?}: {text}");
        text
    }

    async fn updates(&self, domain: &str, since: &str, after: Option<&str>) -> String {
        let (status, text) = self.post(Contract::GetUpdates, &updates_body(domain, since, after)).await;
        assert_eq!(status, 200, "{text}");
        text
    }
}

/// The response element with the SOAP envelope stripped.
fn strip_envelope(xml: &str) -> String {
    let start = xml.find("<soapenv:Body>").expect("a SOAP body") + "<soapenv:Body>".len();
    let end = xml.rfind("</soapenv:Body>").expect("a SOAP body end");
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{}", &xml[start..end])
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `xmllint --noout --schema <xsd> files…`; panics with xmllint's report on failure.
fn xmllint(xsd: &str, files: &[PathBuf]) {
    if files.is_empty() {
        return;
    }
    let out = std::process::Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(repo(xsd))
        .args(files)
        .output()
        .expect("xmllint is installed (libxml2-utils)");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "xmllint refused documents for {xsd}:\n{}", report.lines().take(40).collect::<Vec<_>>().join("\n"));
    assert_eq!(report.matches("validates").count(), files.len(), "{report}");
}

/// (path of local names, text) of every text-bearing element.
fn leaves(xml: &str) -> Vec<(String, String)> {
    let mut r = quick_xml::Reader::from_str(xml);
    r.config_mut().trim_text(true);
    let mut stack: Vec<String> = vec![];
    let mut out = vec![];
    loop {
        match r.read_event().unwrap() {
            quick_xml::events::Event::Start(e) => stack.push(String::from_utf8_lossy(e.local_name().as_ref()).into_owned()),
            quick_xml::events::Event::End(_) => {
                stack.pop();
            }
            quick_xml::events::Event::Text(t) => out.push((stack.join("/"), t.unescape().unwrap().into_owned())),
            quick_xml::events::Event::Eof => break,
            _ => {}
        }
    }
    out
}

fn leaf<'a>(l: &'a [(String, String)], suffix: &str) -> Option<&'a str> {
    l.iter().find(|(p, _)| p.ends_with(suffix)).map(|(_, v)| v.as_str())
}

fn leaves_all<'a>(l: &'a [(String, String)], suffix: &str) -> Vec<&'a str> {
    l.iter().filter(|(p, _)| p.ends_with(suffix)).map(|(_, v)| v.as_str()).collect()
}

/// The elements `<tag>…</tag>` (no nesting of the same tag in our responses).
fn blocks<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = vec![];
    let mut rest = xml;
    while let Some(s) = rest.find(&open) {
        let e = rest[s..].find(&close).expect("closed") + s + close.len();
        out.push(&rest[s..e]);
        rest = &rest[e..];
    }
    out
}

fn result_code(xml: &str) -> String {
    leaf(&leaves(xml), "result/resultCode").unwrap_or("").to_string()
}

/// An observation as the response carries it.
#[derive(Debug, Clone)]
struct ObsDoc {
    id: String,
    term: String,
    system: String,
    status: String,
    value: String,
    date: String,
    unit: String,
}

fn observations(xml: &str) -> Vec<ObsDoc> {
    let mut out = vec![];
    for g in blocks(xml, "tns:observationGroup") {
        let gl = leaves(g);
        let unit = leaf(&gl, "performerRole/careUnit/id/extension").unwrap().to_string();
        for o in blocks(g, "observation") {
            let l = leaves(o);
            let value = leaf(&l, "value/pq/value").or(leaf(&l, "value/cv/code")).unwrap().to_string();
            out.push(ObsDoc {
                id: leaf(&l, "observation/id/extension").unwrap().to_string(),
                term: leaf(&l, "observation/type/code").unwrap().to_string(),
                system: leaf(&l, "observation/type/codeSystem").unwrap().to_string(),
                status: leaf(&l, "observation/status/code").unwrap().to_string(),
                value,
                date: leaf(&l, "observation/time/start/value").unwrap()[..8].to_string(),
                unit: unit.clone(),
            });
        }
    }
    out
}

fn value_text(v: &AnswerValue) -> String {
    match v {
        AnswerValue::Quantity(q) => q.to_string(),
        AnswerValue::Code(c) => c.to_string(),
    }
}

fn stockholm_ts(t: chrono::DateTime<chrono::Utc>) -> String {
    t.with_timezone(&chrono_tz::Europe::Stockholm).format("%Y%m%d%H%M%S").to_string()
}

const CLINICAL: [Contract; 4] = [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations];

// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_validates_against_the_riv_schemas() {
    let mut s = spec(11, 90);
    s.bad_item_share = 0.03;
    let sb = sandbox(s, JournalOptions { page_size: 25, ..Default::default() }).await;
    let out = tempfile::tempdir().unwrap();
    let mut files: HashMap<Contract, Vec<PathBuf>> = HashMap::new();
    let mut write = |c: Contract, name: String, xml: &str| {
        let p = out.path().join(format!("{}-{name}.xml", c.name()));
        std::fs::write(&p, xml).unwrap();
        files.entry(c).or_default().push(p);
    };

    // Every archetype and a spread of random patients, every clinical contract; the requests
    // are kept too, so they are checked against the same schemas.
    let patients: Vec<usize> = (0..archetype::COUNT).chain((archetype::COUNT..90).step_by(4)).collect();
    let mut documents = 0;
    for &p in &patients {
        let id = sb.pop.patient_id(p);
        for c in CLINICAL {
            let req = request_body(c, id.raw(), id.oid(), &Filter::default());
            write(c, format!("request-{p}"), &format!("<?xml version=\"1.0\"?>\n{req}"));
            let xml = sb.fetch(c, p, &Filter::default()).await;
            assert_eq!(result_code(&xml), "OK");
            documents += xml.matches("<documentId>").count() + xml.matches("<observation>").count() + xml.matches("<activity>").count();
            write(c, format!("response-{p}"), &strip_envelope(&xml));
        }
    }
    assert!(documents > 500, "a sample worth validating ({documents} documents)");
    assert!(
        patients.iter().any(|p| !sb.pop.truth().patient(*p).bad_items().is_empty()),
        "deliberately bad items are part of what is validated"
    );

    // Filters, an unknown patient, a reserve number, INVALID_REQUEST and resultCode ERROR.
    let f = Filter { units: vec![vocab::REHAB_UNITS[0].to_string()], window: Some((today() - chrono::TimeDelta::days(200), today())) };
    for c in CLINICAL {
        let id = sb.pop.patient_id(archetype::ARTROS_KNEE_COMPLETE);
        let (_, xml) = sb.post(c, &request_body(c, id.raw(), id.oid(), &f)).await;
        write(c, "filtered".into(), &strip_envelope(&xml));
        let (_, xml) = sb.post(c, &request_body(c, "191212121212", registerbrygga::model::OID_PERSONNUMMER, &f)).await;
        assert_eq!(result_code(&xml), "OK");
        write(c, "unknown".into(), &strip_envelope(&xml));
        let (_, xml) = sb.post(c, &request_body(c, "191212121212", "1.2.3.4", &f)).await;
        assert_eq!(leaf(&leaves(&xml), "result/errorCode"), Some("INVALID_REQUEST"));
        write(c, "invalid".into(), &strip_envelope(&xml));
    }
    sb.server.set_faults(Faults { result_error: 1.0, ..Default::default() });
    for c in CLINICAL {
        let xml = sb.fetch(c, archetype::KOL, &Filter::default()).await;
        assert_eq!(result_code(&xml), "ERROR");
        write(c, "error".into(), &strip_envelope(&xml));
    }
    let since = "19700101000000";
    let xml = sb.updates("riv:clinicalprocess:logistics:logistics", since, None).await;
    write(Contract::GetUpdates, "error".into(), &strip_envelope(&xml));
    sb.server.clear_faults();

    // The engagement index: every page of every domain.
    for domain in registerbrygga::config::default_domains() {
        let mut after: Option<String> = None;
        for page in 0.. {
            let body = updates_body(&domain, since, after.as_deref());
            write(Contract::GetUpdates, format!("request-{}-{page}", domain.replace(':', "_")), &format!("<?xml version=\"1.0\"?>\n{body}"));
            let xml = sb.updates(&domain, since, after.as_deref()).await;
            write(Contract::GetUpdates, format!("response-{}-{page}", domain.replace(':', "_")), &strip_envelope(&xml));
            let l = leaves(&xml);
            if leaf(&l, "responseIsComplete") == Some("true") {
                break;
            }
            after = leaves_all(&l, "registeredResidentEngagement/registeredResidentIdentification").last().map(|s| s.to_string());
        }
    }

    for c in Contract::ALL {
        xmllint(c.response_xsd(), &files[&c]);
    }

    // A control: the check does catch a document that breaks the schema.
    let good = std::fs::read_to_string(&files[&Contract::GetCareContacts][1]).unwrap();
    assert!(good.contains("<approvedForPatient>true</approvedForPatient>"));
    let broken = out.path().join("broken.xml");
    std::fs::write(&broken, good.replacen("<approvedForPatient>true</approvedForPatient>", "", 1)).unwrap();
    let status = std::process::Command::new("xmllint")
        .args(["--noout", "--schema"])
        .arg(repo(Contract::GetCareContacts.response_xsd()))
        .arg(&broken)
        .output()
        .unwrap()
        .status;
    assert!(!status.success(), "xmllint must refuse a response without approvedForPatient");
}

#[test]
fn the_same_seed_gives_the_same_journal() {
    let a: SharedPopulation = Arc::new(Population::generate(&spec(5, 60)));
    let b: SharedPopulation = Arc::new(Population::generate(&spec(5, 60)));
    let c: SharedPopulation = Arc::new(Population::generate(&spec(6, 60)));
    // A smaller population with the same seed holds the same first patients: each journal
    // depends only on (seed, index).
    let small: SharedPopulation = Arc::new(Population::generate(&spec(5, 30)));
    assert_eq!(a.stats().care_contacts, b.stats().care_contacts);
    let mut differs = 0;
    for p in 0..60 {
        assert_eq!(a.patient_id(p), b.patient_id(p));
        for contract in CLINICAL {
            let x = render_patient(&a, contract, p);
            assert_eq!(x, render_patient(&b, contract, p), "patient {p} {contract:?}");
            if p < 30 {
                assert_eq!(x, render_patient(&small, contract, p), "patient {p} {contract:?} in a smaller population");
            }
            if x != render_patient(&c, contract, p) {
                differs += 1;
            } else {
                assert_ne!(contract, Contract::GetCareContacts, "patient {p}'s visits do not depend on the seed");
            }
        }
        assert_eq!(a.truth().patient(p), b.truth().patient(p));
    }
    // (Empty responses, e.g. a patient without activities, are alike whatever the seed.)
    assert!(differs > 160, "another seed gives another journal ({differs} of 240 responses differ)");
    assert_eq!(a.listing(), b.listing());
}

#[test]
fn the_population_has_the_intended_shape() {
    let pop = Population::generate(&spec(2026, 4000));
    let truth = pop.truth();
    let all: Vec<_> = truth.patients().collect();
    let st = pop.stats();
    assert_eq!(st.patients, 4000);
    assert_eq!(st.care_contacts as usize, all.iter().map(|p| p.visits.len()).sum::<usize>());
    assert!(st.samordningsnummer >= 3 && st.reserve_numbers >= 2, "{st:?}");
    assert!(st.personnummer as f64 > 0.98 * 4000.0);

    // Identities: valid national ids (Luhn, date), reserve numbers with the Värmland OID.
    for p in &all {
        match p.kind() {
            IdKind::Reserve => assert_eq!(p.id.oid(), "1.2.752.74.9.2"),
            _ => {
                let parsed = registerbrygga::model::PatientId::parse_national(p.id.raw(), today()).unwrap();
                assert_eq!(parsed.kind(), p.kind());
                assert_eq!(parsed.is_female(), Some(p.female));
            }
        }
    }

    // Women over 50 are the largest group.
    let group = |female: bool, over50: bool| all.iter().filter(|p| p.female == female && (p.age_at(today()) >= 50) == over50).count();
    let women50 = group(true, true);
    assert!(women50 > group(false, true) && women50 > group(true, false) && women50 > group(false, false));

    // Most physiotherapy visits are musculoskeletal (ICD-10 chapter M, or injuries S).
    let mut physio = 0;
    let mut msk = 0;
    for p in &all {
        for v in p.valid_visits().filter(|v| v.profession == vocab::profession::PHYSIOTHERAPIST) {
            let codes: Vec<_> = p.diagnoses.iter().filter(|d| d.care_contact_id == v.care_contact_id).collect();
            if let Some(d) = codes.first() {
                physio += 1;
                if d.code.starts_with('M') || d.code.starts_with('S') {
                    msk += 1;
                }
            }
        }
    }
    assert!(msk as f64 > 0.6 * physio as f64, "{msk} of {physio} physiotherapy visits with a diagnosis are musculoskeletal");

    // Every condition is there, within its age limits.
    for c in [
        Condition::Artros,
        Condition::Musculoskeletal,
        Condition::Kol,
        Condition::Stroke,
        Condition::Tia,
        Condition::HeartFailure,
        Condition::Osteoporosis,
        Condition::Incontinence,
        Condition::Depression,
        Condition::Stress,
        Condition::GeneralPractice,
        Condition::FrequentAttender,
    ] {
        assert!(all.iter().filter(|p| p.conditions.contains(&c)).count() >= 3, "{c:?}");
    }
    for p in &all {
        for d in &p.diagnoses {
            if d.code.starts_with("M80") || d.code.starts_with("M81") {
                assert!(p.age_at(d.date) >= 49, "osteoporosis under 50");
            }
            if d.code.starts_with("N393") || d.code.starts_with("N394") || d.code.starts_with("R32") {
                assert!(p.age_at(d.date) >= 19, "incontinence under 20");
            }
        }
    }
    let has = |prefix: &str| all.iter().filter(|p| p.has_diagnosis(prefix, None, today() - chrono::TimeDelta::days(540)..=today())).count();
    for code in ["M16", "M17", "M18", "J44", "I63", "I61", "I64", "G45", "I50", "M80", "M81", "S72", "N393", "N394", "R32", "F32", "F33", "F43", "F438A"] {
        assert!(has(code) >= 1, "no patient with {code}");
    }

    // FaR is KVÅ DV200; the other rehab measures are local codes.
    let far: Vec<_> = all.iter().flat_map(|p| p.activities.iter()).filter(|a| a.code == vocab::kva::FAR).collect();
    assert!(far.len() > 100 && far.iter().all(|a| a.system == OID_KVA));
    for code in [act::ARTROSSKOLA, act::SUPERVISED_EXERCISE, act::SIX_MINUTE_WALK_TEST, act::BALANCE_TRAINING, act::PELVIC_FLOOR_TRAINING, act::BODY_AWARENESS] {
        assert!(all.iter().any(|p| p.has_activity(code, None, today() - chrono::TimeDelta::days(540)..=today())), "{code}");
    }

    // Mångsökare: more than 20 visits within twelve months.
    let frequent = all
        .iter()
        .filter(|p| {
            let dates: Vec<_> = p.valid_visits().map(|v| v.date).collect();
            dates.iter().any(|d| dates.iter().filter(|x| **x >= *d && **x < *d + chrono::TimeDelta::days(365)).count() > 20)
        })
        .count();
    assert!(frequent >= 5, "{frequent} mångsökare");

    // Artros episodes follow the SAR path's windows.
    let episodes: Vec<_> = all.iter().flat_map(|p| p.episodes.iter()).collect();
    assert!(episodes.len() > 500);
    for e in &episodes {
        let fv = e.first_visit;
        if let Some(d) = e.form(SarForm::M3Pat).event_date {
            let days = (d - fv).num_days();
            assert!((91..=152).contains(&days), "3-month visit {days} days after the first: inside the window");
        }
        if let Some(d) = e.form(SarForm::Y1Pat).event_date {
            let days = (d - fv).num_days();
            assert!((365..=540).contains(&days), "1-year visit {days} days after the first: inside the window");
        }
    }
    let recorded = |f: SarForm| episodes.iter().filter(|e| e.form(f).recorded).count();
    assert!(recorded(SarForm::Y1Pat) > 50 && recorded(SarForm::M3Pat) > recorded(SarForm::Y1Pat));
    let incomplete = episodes.iter().flat_map(|e| e.forms.iter()).filter(|f| f.recorded && !f.complete && !f.nullified).count();
    assert!(incomplete > 10, "some forms lack a mandatory answer");
    assert!(all.iter().filter(|p| p.opt_out.is_some()).count() >= 10, "some patients object to register reporting");
    assert!(all.iter().map(|p| p.nullified_documents().len()).sum::<usize>() > 100, "some documents are nullified");
    assert!(all.iter().all(|p| p.bad_items().is_empty()), "no bad items unless asked for");

    // The listing file: listed personnummer at the vårdcentraler.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("listning.csv");
    let rows = pop.write_listing(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("personnummer;vardcentral;listad_fran"));
    let parsed: Vec<Vec<&str>> = lines.map(|l| l.split(';').collect()).collect();
    assert_eq!(parsed.len(), rows);
    assert!(rows as f64 > 0.85 * 4000.0);
    for row in &parsed {
        let i = pop.index_of(row[0]).unwrap();
        let p = &all[i];
        assert_eq!(p.kind(), IdKind::Personnummer);
        assert_eq!(p.listed_at(), Some(row[1]));
        assert!(vocab::VC_UNITS.contains(&row[1]));
        assert!(NaiveDate::parse_from_str(row[2], "%Y-%m-%d").is_ok());
    }
    let listed: usize = all.iter().filter(|p| p.listing.is_some()).count();
    assert_eq!(listed, rows);
}

#[test]
fn the_truth_agrees_with_the_documents() {
    let pop: SharedPopulation = Arc::new(Population::generate(&spec(77, 400)));
    let truth = pop.truth();
    let mut complete_forms = 0;
    for p in truth.patients() {
        let contacts = String::from_utf8(render_patient(&pop, Contract::GetCareContacts, p.index)).unwrap();
        let diagnoses = String::from_utf8(render_patient(&pop, Contract::GetDiagnosis, p.index)).unwrap();
        let activities = String::from_utf8(render_patient(&pop, Contract::GetActivities, p.index)).unwrap();
        let obs_xml = String::from_utf8(render_patient(&pop, Contract::GetObservations, p.index)).unwrap();

        // One document per bookkept item, with the same ids, codes and nullification.
        let cc = blocks(&contacts, "tns:careContact");
        assert_eq!(cc.len(), p.visits.len());
        for (doc, v) in cc.iter().zip(&p.visits) {
            let l = leaves(doc);
            assert_eq!(leaf(&l, "careContactHeader/documentId"), Some(v.document_id.as_str()));
            assert_eq!(leaf(&l, "careContactHeader/careContactId"), Some(v.care_contact_id.as_str()));
            assert_eq!(leaf(&l, "careContactHeader/nullified"), Some(if v.nullified { "true" } else { "false" }));
            assert_eq!(leaf(&l, "careContactOrgUnit/orgUnitHSAId"), Some(v.unit.as_str()));
            assert_eq!(leaf(&l, "careContactCode/code"), Some(v.contact_type.to_string().as_str()));
            assert_eq!(&leaf(&l, "careContactTimePeriod/start").unwrap()[..8], d8(v.date));
            assert_eq!(leaf(&l, "healthcareProfessionalRoleCode/code"), Some(v.profession));
            assert_eq!(leaf(&l, "careContactHeader/patientId/id"), Some(p.id.raw()));
        }
        let dx = blocks(&diagnoses, "tns:diagnosis");
        assert_eq!(dx.len(), p.diagnoses.len());
        for (doc, d) in dx.iter().zip(&p.diagnoses) {
            let l = leaves(doc);
            assert_eq!(leaf(&l, "diagnosisHeader/careContactId"), Some(d.care_contact_id.as_str()));
            assert_eq!(registerbrygga::model::normalise_icd(leaf(&l, "diagnosisCode/code").unwrap()), d.code);
            assert_eq!(leaf(&l, "diagnosisCode/codeSystem"), Some(registerbrygga::model::OID_ICD10SE));
            assert_eq!(leaf(&l, "typeOfDiagnosis"), Some(if d.main { "Huvuddiagnos" } else { "Bidiagnos" }));
        }
        let acts: Vec<_> = blocks(&activities, "activity").iter().map(|a| leaves(a)).collect();
        assert_eq!(acts.len(), p.activities.len());
        for (l, a) in acts.iter().zip(&p.activities) {
            assert_eq!(leaf(l, "activity/id/extension"), Some(a.document_id.as_str()));
            assert_eq!(leaf(l, "activity/code/code"), Some(a.code.as_str()));
            assert_eq!(leaf(l, "activity/code/codeSystem"), Some(a.system.as_str()));
            assert_eq!(leaf(l, "activity/status/code"), Some(if a.nullified { status::NULLIFIED } else { status::COMPLETED }));
            assert_eq!(leaf(l, "referredInformation/id/extension"), Some(a.care_contact_id.as_str()));
        }
        let docs = observations(&obs_xml);
        assert_eq!(docs.len(), p.observations.len());
        let by_id: HashMap<&str, &ObsDoc> = docs.iter().map(|o| (o.id.as_str(), o)).collect();
        for o in &p.observations {
            let doc = by_id[o.document_id.as_str()];
            assert_eq!(doc.term, o.term);
            assert_eq!(doc.system, LOCAL_TERMS);
            assert_eq!(doc.value, value_text(&o.value));
            assert_eq!(doc.status, if o.nullified { status::NULLIFIED } else { status::COMPLETED });
        }

        // Every complete form has all its mandatory answers as valid observations, on the
        // form's day at the form's unit, with the intended values.
        for e in &p.episodes {
            for f in &e.forms {
                if !f.complete {
                    continue;
                }
                complete_forms += 1;
                let date = d8(f.event_date.unwrap());
                for term in f.form.mandatory() {
                    let want = value_text(&f.answers[term]);
                    assert!(
                        docs.iter().any(|d| d.term == term
                            && d.status == status::COMPLETED
                            && d.date == date
                            && Some(d.unit.as_str()) == f.unit.as_deref()
                            && d.value == want),
                        "patient {} episode {} {:?}: {term} missing from the documents",
                        p.index,
                        e.index,
                        f.form
                    );
                }
            }
            for f in e.forms.iter().filter(|f| f.recorded && !f.complete && !f.nullified) {
                assert!(!f.missing.is_empty());
            }
        }
    }
    assert!(complete_forms > 100, "{complete_forms} complete forms checked");

    // The archetypes say what they promise.
    let t = |i: usize| truth.patient(i);
    let k = t(archetype::ARTROS_KNEE_COMPLETE);
    assert!(k.episodes[0].forms.iter().all(|f| f.complete), "{:?}", k.episodes[0].forms);
    let m3 = t(archetype::ARTROS_M3PAT_INCOMPLETE);
    assert_eq!(m3.form(0, SarForm::M3Pat).missing, vec![obs::EQ_VAS]);
    assert!(!m3.form(0, SarForm::Y1Pat).recorded);
    let fvpt = t(archetype::ARTROS_FVPT_INCOMPLETE);
    assert!(fvpt.form(0, SarForm::FVPat).complete && fvpt.form(0, SarForm::FVPT).missing == vec![obs::SIDE]);
    assert_eq!(t(archetype::ARTROS_Y1_INCOMPLETE).form(0, SarForm::Y1Pat).missing, vec![obs::WANTS_SURGERY]);
    let drop = t(archetype::ARTROS_DROPOUT_AFTER_SCHOOL);
    assert!(drop.form(0, SarForm::FVPat).complete && !drop.form(0, SarForm::M3Pat).recorded);
    assert!(drop.has_activity(act::ARTROSSKOLA, None, today() - chrono::TimeDelta::days(400)..=today()));
    assert!(!drop.has_activity(act::SUPERVISED_EXERCISE, None, today() - chrono::TimeDelta::days(400)..=today()));
    let nul = t(archetype::ARTROS_M3_NULLIFIED);
    assert!(nul.form(0, SarForm::M3Pat).nullified && nul.form(0, SarForm::M3PT).nullified && nul.form(0, SarForm::FVPat).complete);
    let recent = t(archetype::ARTROS_RECENT);
    assert!(recent.form(0, SarForm::FVPat).recorded && !recent.form(0, SarForm::M3Pat).recorded);
    assert_eq!(t(archetype::ARTROS_SAMORDNINGSNUMMER).kind(), IdKind::Samordningsnummer);
    assert_eq!(t(archetype::ARTROS_RESERVE_NUMBER).kind(), IdKind::Reserve);
    assert!(t(archetype::ARTROS_OBJECTION).opt_out.is_some());
    assert!(t(archetype::UNLISTED).listing.is_none());

    // Which registrations SAR should hold, and which wait on the worklist.
    let expected = truth.sar_expected();
    let worklist = truth.sar_worklist();
    let has = |list: &[registerbrygga::sandbox::journal::ExpectedRegistration], p: usize, f: SarForm| list.iter().any(|r| r.patient == p && r.form == f);
    for f in SarForm::ALL {
        assert!(has(&expected, archetype::ARTROS_KNEE_COMPLETE, f));
    }
    assert!(has(&worklist, archetype::ARTROS_M3PAT_INCOMPLETE, SarForm::M3Pat) && !has(&expected, archetype::ARTROS_M3PAT_INCOMPLETE, SarForm::M3Pat));
    assert!(has(&expected, archetype::ARTROS_M3PAT_INCOMPLETE, SarForm::M3PT));
    assert!(expected.iter().all(|r| r.patient != archetype::ARTROS_OBJECTION && r.patient != archetype::ARTROS_RESERVE_NUMBER));
    assert!(has(&expected, archetype::ARTROS_SAMORDNINGSNUMMER, SarForm::FVPat));
    assert!(!has(&expected, archetype::ARTROS_M3_NULLIFIED, SarForm::M3Pat) && has(&expected, archetype::ARTROS_M3_NULLIFIED, SarForm::FVPT));
    assert!(expected.iter().all(|r| r.missing.is_empty() && r.waits_for.is_empty()));
    assert!(worklist.iter().all(|r| !r.missing.is_empty() || !r.waits_for.is_empty()));
    // Follow-ups wait on the worklist while a first-visit form is incomplete.
    assert!(has(&worklist, archetype::ARTROS_FVPT_INCOMPLETE, SarForm::FVPT) && has(&expected, archetype::ARTROS_FVPT_INCOMPLETE, SarForm::FVPat));
    for f in [SarForm::M3Pat, SarForm::M3PT] {
        let w = worklist.iter().find(|r| r.patient == archetype::ARTROS_FVPT_INCOMPLETE && r.form == f);
        assert!(w.is_some_and(|w| w.missing.is_empty() && w.waits_for == [SarForm::FVPT]), "{f:?} waits for FVPT: {w:?}");
    }
    let keys: BTreeSet<_> = expected.iter().map(|r| (r.patient, r.episode, r.form)).collect();
    assert_eq!(keys.len(), expected.len(), "one registration per patient, episode and form");

    // A PVK-style question: artros (hip/knee) at a rehab unit with artrosskola within a window.
    let unit = vocab::REHAB_UNITS[0];
    let w = today() - chrono::TimeDelta::days(365)..=today();
    let ar12 = truth.select(|p| {
        (p.has_diagnosis("M16", Some(unit), w.clone()) || p.has_diagnosis("M17", Some(unit), w.clone())) && p.has_activity(act::ARTROSSKOLA, Some(unit), w.clone())
    });
    assert!(!ar12.is_empty());
    assert!(ar12.iter().all(|p| p.visits_in(Some(unit), w.clone()) > 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engagement_index_pages_and_reports_changes() {
    let sb = sandbox(spec(31, 150), JournalOptions { page_size: 7, ..Default::default() }).await;
    let domain = "riv:clinicalprocess:logistics:logistics";
    let mut seen: Vec<String> = vec![];
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let xml = sb.updates(domain, "19700101000000", after.as_deref()).await;
        let l = leaves(&xml);
        let ids: Vec<String> = leaves_all(&l, "registeredResidentEngagement/registeredResidentIdentification").iter().map(|s| s.to_string()).collect();
        pages += 1;
        let complete = leaf(&l, "responseIsComplete") == Some("true");
        assert!(ids.len() <= 7);
        assert!(complete || ids.len() == 7, "only the last page is short");
        assert_eq!(result_code(&xml), "OK");
        // Every engagement names a unit (its logical address) and the categorisation vko.
        for e in blocks(&xml, "tns:engagement") {
            let el = leaves(e);
            assert_eq!(leaf(&el, "categorization"), Some("vko"));
            assert!(sb.pop.units().iter().any(|u| Some(u.hsa_id.as_str()) == leaf(&el, "logicalAddress")));
        }
        seen.extend(ids);
        if complete {
            break;
        }
        after = seen.last().cloned();
    }
    let expected: Vec<String> = {
        let mut v: Vec<String> =
            sb.pop.truth().patients().filter(|p| p.kind() != IdKind::Reserve && !p.visits.is_empty()).map(|p| p.id.raw().to_string()).collect();
        v.sort();
        v
    };
    assert_eq!(seen, expected, "every patient once, in id order, reserve numbers left out");
    assert!(pages >= 150 / 7);
    assert_eq!(sb.server.requests().by_contract[&Contract::GetUpdates], pages as u64);

    // Nothing changed since the latest update; then a mutation shows up, in every domain the
    // patient has data in.
    let before = stockholm_ts(sb.pop.last_update());
    let xml = sb.updates(domain, &before, None).await;
    assert!(blocks(&xml, "tns:registeredResidentEngagement").is_empty());
    assert_eq!(leaf(&leaves(&xml), "responseIsComplete"), Some("true"));
    let p = archetype::ARTROS_KNEE_COMPLETE;
    let m = sb.pop.set_answer(p, 0, SarForm::M3Pat, obs::PAIN_NRS, AnswerValue::Quantity(1.0)).unwrap();
    for d in registerbrygga::config::default_domains() {
        let xml = sb.updates(&d, &before, None).await;
        let l = leaves(&xml);
        assert_eq!(leaves_all(&l, "registeredResidentEngagement/registeredResidentIdentification"), vec![sb.pop.patient_id(p).raw()], "{d}");
        assert_eq!(leaf(&l, "engagement/updateTime"), Some(stockholm_ts(m.updated_at).as_str()));
    }
    assert_eq!(sb.pop.truth().changed_since(sb.pop.updated_at(p) - chrono::TimeDelta::seconds(1)), vec![p]);
    // An unknown service domain lists nobody.
    let xml = sb.updates("riv:clinicalprocess:nothing:here", "19700101000000", None).await;
    assert!(blocks(&xml, "tns:registeredResidentEngagement").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_show_up_in_documents_truth_and_updates() {
    let sb = sandbox(spec(41, 40), JournalOptions::default()).await;
    let pop = &sb.pop;
    let truth = pop.truth();
    let p = archetype::ARTROS_KNEE_COMPLETE;
    let t0 = pop.updated_at(p);
    let start = pop.last_update();

    // Change an answer: same document, new value, in the documents and the truth.
    let m1 = pop.set_answer(p, 0, SarForm::Y1Pat, obs::EQ_VAS, AnswerValue::Quantity(93.0)).unwrap();
    assert!(m1.updated_at > t0);
    let obs_xml = sb.fetch(Contract::GetObservations, p, &Filter::default()).await;
    let doc = observations(&obs_xml).into_iter().find(|o| o.id == m1.documents[0]).unwrap();
    assert_eq!((doc.term.as_str(), doc.value.as_str()), (obs::EQ_VAS, "93"));
    assert_eq!(truth.patient(p).form(0, SarForm::Y1Pat).answers[obs::EQ_VAS], AnswerValue::Quantity(93.0));
    let reg = truth.sar_expected().into_iter().find(|r| r.patient == p && r.form == SarForm::Y1Pat).unwrap();
    assert_eq!(reg.answers[obs::EQ_VAS], AnswerValue::Quantity(93.0));

    // Add the missing mandatory answer: the form leaves the worklist for SAR.
    let q = archetype::ARTROS_M3PAT_INCOMPLETE;
    assert!(truth.sar_worklist().iter().any(|r| r.patient == q && r.form == SarForm::M3Pat));
    let m2 = pop.set_answer(q, 0, SarForm::M3Pat, obs::EQ_VAS, AnswerValue::Quantity(70.0)).unwrap();
    assert!(truth.patient(q).form(0, SarForm::M3Pat).complete);
    assert!(truth.sar_expected().iter().any(|r| r.patient == q && r.form == SarForm::M3Pat));
    assert!(!truth.sar_worklist().iter().any(|r| r.patient == q && r.form == SarForm::M3Pat));
    let obs_xml = sb.fetch(Contract::GetObservations, q, &Filter::default()).await;
    assert!(observations(&obs_xml).iter().any(|o| o.id == m2.documents[0] && o.value == "70"));

    // Nullify the 1-year visit with what was documented at it.
    let y1 = truth.patient(p).form(0, SarForm::Y1Pat).care_contact_id.clone().unwrap();
    let m3 = pop.nullify_visit(p, &y1).unwrap();
    assert!(m3.updated_at > m1.updated_at && m3.documents.len() > 5);
    let cc = sb.fetch(Contract::GetCareContacts, p, &Filter::default()).await;
    let visit = blocks(&cc, "tns:careContact").into_iter().find(|b| b.contains(&format!("<careContactId>{y1}</careContactId>"))).unwrap();
    assert_eq!(leaf(&leaves(visit), "careContactHeader/nullified"), Some("true"));
    let obs_xml = sb.fetch(Contract::GetObservations, p, &Filter::default()).await;
    let docs = observations(&obs_xml);
    for id in &m3.documents[1..] {
        if let Some(o) = docs.iter().find(|o| &o.id == id) {
            assert_eq!(o.status, status::NULLIFIED);
        }
    }
    let after = truth.patient(p);
    assert!(after.form(0, SarForm::Y1Pat).nullified);
    assert!(after.nullified_documents().iter().any(|n| n.kind == "care_contact"));
    assert!(!truth.sar_expected().iter().any(|r| r.patient == p && r.form == SarForm::Y1Pat));

    // Nullify a single diagnosis.
    let dx = after.diagnoses.iter().find(|d| !d.nullified).unwrap().document_id.clone();
    pop.nullify_document(p, &dx).unwrap();
    let xml = sb.fetch(Contract::GetDiagnosis, p, &Filter::default()).await;
    let doc = blocks(&xml, "tns:diagnosis").into_iter().find(|b| b.contains(&format!("<documentId>{dx}</documentId>"))).unwrap();
    assert_eq!(leaf(&leaves(doc), "diagnosisHeader/nullified"), Some("true"));

    // A register objection: nothing of the patient's stays in SAR.
    let before = truth.sar_expected().iter().filter(|r| r.patient == archetype::ARTROS_HIP_AWAITING_Y1).count();
    assert!(before >= 4);
    let m4 = pop.add_objection(archetype::ARTROS_HIP_AWAITING_Y1).unwrap();
    let xml = sb.fetch(Contract::GetObservations, archetype::ARTROS_HIP_AWAITING_Y1, &Filter::default()).await;
    assert!(observations(&xml).iter().any(|o| o.id == m4.documents[0] && o.term == obs::REGISTER_OBJECTION && o.value == answer::YES));
    assert!(truth.patient(archetype::ARTROS_HIP_AWAITING_Y1).opt_out.is_some());
    assert!(!truth.sar_expected().iter().any(|r| r.patient == archetype::ARTROS_HIP_AWAITING_Y1));

    // A new visit with a diagnosis, FaR and a 6-minute walk.
    let k = archetype::KOL;
    let visit = VisitSpec {
        date: today(),
        unit: vocab::VC_UNITS[1].to_string(),
        profession: vocab::profession::PHYSIOTHERAPIST.to_string(),
        phone: false,
        diagnoses: vec!["J44.9".into()],
        activities: vec![registerbrygga::model::Code::new(OID_KVA, vocab::kva::FAR)],
        observations: vec![(obs::SIX_MINUTE_WALK.to_string(), AnswerValue::Quantity(410.0))],
    };
    let m5 = pop.add_visit(k, visit).unwrap();
    assert_eq!(m5.documents.len(), 4);
    let kt = truth.patient(k);
    let v = kt.visits.iter().find(|v| v.document_id == m5.documents[0]).unwrap();
    assert_eq!((v.date, v.unit.as_str()), (today(), vocab::VC_UNITS[1]));
    assert!(kt.has_activity(vocab::kva::FAR, Some(vocab::VC_UNITS[1]), today()..=today()));
    assert!(kt.has_diagnosis("J44", Some(vocab::VC_UNITS[1]), today()..=today()));
    let f = Filter { units: vec![vocab::VC_UNITS[1].to_string()], window: Some((today(), today())) };
    let cc = sb.fetch(Contract::GetCareContacts, k, &f).await;
    assert_eq!(leaves_all(&leaves(&cc), "careContactHeader/documentId"), vec![m5.documents[0].as_str()]);
    let acts = sb.fetch(Contract::GetActivities, k, &f).await;
    assert_eq!(leaves_all(&leaves(&acts), "activity/code/code"), vec![vocab::kva::FAR]);
    let obs_xml = sb.fetch(Contract::GetObservations, k, &f).await;
    assert_eq!(observations(&obs_xml).iter().map(|o| (o.term.as_str(), o.value.as_str())).collect::<Vec<_>>(), vec![(obs::SIX_MINUTE_WALK, "410")]);

    // Every mutation moved its patient's update time forward, in order.
    assert!(m1.updated_at < m2.updated_at && m2.updated_at < m3.updated_at && m4.updated_at < m5.updated_at);
    let mut touched = vec![p, q, archetype::ARTROS_HIP_AWAITING_Y1, k];
    touched.sort();
    assert_eq!(truth.changed_since(start), touched);

    // Bad mutations are refused without touching anything.
    assert!(pop.set_answer(p, 0, SarForm::M3PT, obs::EQ_VAS, AnswerValue::Quantity(1.0)).is_err(), "not an answer of that form");
    assert!(pop.set_answer(archetype::ARTROS_RECENT, 0, SarForm::M3Pat, obs::EQ_VAS, AnswerValue::Quantity(1.0)).is_err(), "not recorded yet");
    assert!(pop.set_answer(p, 0, SarForm::M3Pat, obs::EQ_VAS, AnswerValue::code(answer::YES)).is_err(), "wrong value kind");
    assert!(pop.nullify_document(p, "not-a-document").is_err());
    assert!(pop.add_visit(p, VisitSpec { unit: "SE0000000000-X".into(), ..sample_visit() }).is_err());
}

fn sample_visit() -> VisitSpec {
    VisitSpec {
        date: today(),
        unit: vocab::REHAB_UNITS[0].into(),
        profession: vocab::profession::PHYSIOTHERAPIST.into(),
        phone: false,
        diagnoses: vec![],
        activities: vec![],
        observations: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_filter_by_unit_window_and_contact() {
    let sb = sandbox(spec(51, 30), JournalOptions::default()).await;
    let p = archetype::ARTROS_KNEE_COMPLETE;
    let t = sb.pop.truth().patient(p);
    let unit = t.episodes[0].unit.clone();
    let from = t.episodes[0].first_visit;
    let to = from + chrono::TimeDelta::days(60);
    let f = Filter { units: vec![unit.clone()], window: Some((from, to)) };
    let want_visits: Vec<&str> = t.visits.iter().filter(|v| v.unit == unit && v.date >= from && v.date <= to).map(|v| v.document_id.as_str()).collect();
    assert!(want_visits.len() >= 3);
    let xml = sb.fetch(Contract::GetCareContacts, p, &f).await;
    assert_eq!(leaves_all(&leaves(&xml), "careContactHeader/documentId"), want_visits);
    let want_dx: Vec<&str> = t.diagnoses.iter().filter(|d| d.unit == unit && d.date >= from && d.date <= to).map(|d| d.document_id.as_str()).collect();
    let xml = sb.fetch(Contract::GetDiagnosis, p, &f).await;
    assert_eq!(leaves_all(&leaves(&xml), "diagnosisHeader/documentId"), want_dx);
    let want_obs = t.observations.iter().filter(|o| o.unit == unit && o.date >= from && o.date <= to).count();
    let xml = sb.fetch(Contract::GetObservations, p, &f).await;
    assert_eq!(observations(&xml).len(), want_obs);
    let want_acts = t.activities.iter().filter(|a| a.unit == unit && a.date >= from && a.date <= to).count();
    let xml = sb.fetch(Contract::GetActivities, p, &f).await;
    assert_eq!(blocks(&xml, "activity").len(), want_acts);
    // A large answer is streamed (no Content-Length, several chunks), not built in one piece.
    let id = sb.pop.patient_id(p);
    let body = envelope(NATIONAL_LOGICAL_ADDRESS, &request_body(Contract::GetObservations, id.raw(), id.oid(), &Filter::default()));
    let resp = sb.client.post(sb.server.url(Contract::GetObservations)).header("SOAPAction", Contract::GetObservations.soap_action()).body(body).send().await.unwrap();
    assert!(resp.content_length().is_none(), "a streamed body has no Content-Length");
    let mut stream = resp.bytes_stream();
    let (mut chunks, mut size) = (0, 0);
    while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
        chunks += 1;
        size += chunk.unwrap().len();
    }
    assert!(size > 48 * 1024 && chunks > 1, "{size} bytes in {chunks} chunks");

    // Another unit's filter returns nothing of this episode.
    let other = Filter { units: vec![vocab::VC_UNITS[0].to_string()], window: Some((from + chrono::TimeDelta::days(1), to)) };
    let xml = sb.fetch(Contract::GetObservations, p, &other).await;
    assert!(observations(&xml).iter().all(|o| o.unit == vocab::VC_UNITS[0]));
    // careContactId narrows GetDiagnosis to one visit.
    let cc = &t.diagnoses[0].care_contact_id;
    let id = sb.pop.patient_id(p);
    let body = request_body(Contract::GetDiagnosis, id.raw(), id.oid(), &Filter::default())
        .replace("</GetDiagnosis>", &format!("<careContactId>{cc}</careContactId></GetDiagnosis>"));
    let (_, xml) = sb.post(Contract::GetDiagnosis, &body).await;
    let l = leaves(&xml);
    let got = leaves_all(&l, "diagnosisHeader/careContactId");
    assert!(!got.is_empty() && got.iter().all(|c| c == cc));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_injected_on_request_and_counted() {
    let sb = sandbox(spec(61, 25), JournalOptions::default()).await;
    let p = archetype::KOL;
    let ok = sb.fetch(Contract::GetCareContacts, p, &Filter::default()).await;
    assert_eq!(result_code(&ok), "OK");
    let id = sb.pop.patient_id(p);
    let body = request_body(Contract::GetCareContacts, id.raw(), id.oid(), &Filter::default());

    sb.server.set_faults(Faults { http_500: 1.0, ..Default::default() });
    let (status, text) = sb.post(Contract::GetCareContacts, &body).await;
    assert_eq!(status, 500);
    assert!(!text.contains("Fault"));

    sb.server.set_faults(Faults { soap_fault: 1.0, ..Default::default() });
    let (status, text) = sb.post(Contract::GetCareContacts, &body).await;
    assert_eq!(status, 500);
    assert_eq!(leaf(&leaves(&text), "Fault/faultcode"), Some("soapenv:Server"));

    sb.server.set_faults(Faults { result_error: 1.0, ..Default::default() });
    let (status, text) = sb.post(Contract::GetCareContacts, &body).await;
    assert_eq!(status, 200);
    assert_eq!(result_code(&text), "ERROR");
    assert!(leaf(&leaves(&text), "result/logId").is_some());
    assert!(blocks(&text, "tns:careContact").is_empty());

    sb.server.set_faults(Faults { slow: 1.0, slow_delay: Duration::from_millis(400), ..Default::default() });
    let started = Instant::now();
    let (status, _) = sb.post(Contract::GetCareContacts, &body).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(400));

    // Faults limited to one contract leave the others alone.
    sb.server.set_faults(Faults { http_500: 1.0, contracts: vec![Contract::GetDiagnosis], ..Default::default() });
    assert_eq!(sb.post(Contract::GetCareContacts, &body).await.0, 200);
    let dbody = request_body(Contract::GetDiagnosis, id.raw(), id.oid(), &Filter::default());
    assert_eq!(sb.post(Contract::GetDiagnosis, &dbody).await.0, 500);

    // A share in between fires on some requests, not all.
    sb.server.set_faults(Faults { http_500: 0.5, ..Default::default() });
    let mut failed = 0;
    for _ in 0..40 {
        if sb.post(Contract::GetCareContacts, &body).await.0 == 500 {
            failed += 1;
        }
    }
    assert!((8..=32).contains(&failed), "{failed} of 40 failed at share 0.5");

    sb.server.clear_faults();
    assert_eq!(result_code(&sb.post(Contract::GetCareContacts, &body).await.1), "OK");
    let n = sb.server.requests();
    assert_eq!(n.total, 48);
    assert_eq!(n.by_contract[&Contract::GetCareContacts], 47);
    assert_eq!(n.http_500, 2 + failed);
    assert_eq!((n.soap_faults, n.result_errors, n.slow), (1, 1, 1));
    assert!(n.documents > 0);
    sb.server.reset_requests();
    assert_eq!(sb.server.requests().total, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platform_checks_refuse_bad_requests() {
    let sb = sandbox(spec(71, 25), JournalOptions::default()).await;
    let c = Contract::GetCareContacts;
    let id = sb.pop.patient_id(archetype::MUSCULOSKELETAL);
    let body = request_body(c, id.raw(), id.oid(), &Filter::default());
    let is_client_fault = |(status, text): (u16, String)| status == 500 && leaf(&leaves(&text), "Fault/faultcode") == Some("soapenv:Client");

    assert!(is_client_fault(sb.post_raw(c, Some("urn:riv:wrong:action"), envelope(NATIONAL_LOGICAL_ADDRESS, &body)).await), "wrong SOAPAction");
    assert!(is_client_fault(sb.post_raw(c, None, envelope(NATIONAL_LOGICAL_ADDRESS, &body)).await), "no SOAPAction");
    let wrong_ns = body.replace(c.responder_ns(), "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:2");
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), envelope(NATIONAL_LOGICAL_ADDRESS, &wrong_ns)).await), "wrong namespace");
    let diag = request_body(Contract::GetDiagnosis, id.raw(), id.oid(), &Filter::default());
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), envelope(NATIONAL_LOGICAL_ADDRESS, &diag)).await), "another contract's body");
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), envelope("SE0000000000-NOPE", &body)).await), "unknown logical address");
    let no_header = envelope(NATIONAL_LOGICAL_ADDRESS, &body).replace(
        &format!("<soapenv:Header><itr:LogicalAddress>{NATIONAL_LOGICAL_ADDRESS}</itr:LogicalAddress></soapenv:Header>"),
        "",
    );
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), no_header).await), "no logical address");
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), "<not-xml".into()).await), "not XML");
    let soap12 = envelope(NATIONAL_LOGICAL_ADDRESS, &body).replace("http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope");
    assert!(is_client_fault(sb.post_raw(c, Some(&c.soap_action()), soap12).await), "SOAP 1.2");

    // The logical address may also be the source system or a unit (as the index reports them).
    for la in [vocab::SOURCE_SYSTEM, vocab::REHAB_UNITS[2]] {
        let (status, text) = sb.post_raw(c, Some(&c.soap_action()), envelope(la, &body)).await;
        assert_eq!((status, result_code(&text).as_str()), (200, "OK"));
    }

    // Field errors: INVALID_REQUEST in the result.
    let invalid = |text: &str| leaf(&leaves(text), "result/errorCode") == Some("INVALID_REQUEST");
    let bad_date = body.replace("</patientId>", "</patientId><datePeriod><c:start>2026-01-01</c:start><c:end>20261231</c:end></datePeriod>");
    assert!(invalid(&sb.post(c, &bad_date).await.1));
    let oc = Contract::GetObservations;
    let ob = request_body(oc, id.raw(), id.oid(), &Filter::default());
    let no_agreement = regex::Regex::new("<interactionAgreementId>[^<]*</interactionAgreementId>").unwrap().replace(&ob, "").to_string();
    assert!(invalid(&sb.post(oc, &no_agreement).await.1));
    let v1 = regex::Regex::new("<interactionAgreementId>[^<]*</interactionAgreementId>")
        .unwrap()
        .replace(&ob, "<interactionAgreementId>6ba7b810-9dad-11d1-80b4-00c04fd430c8</interactionAgreementId>")
        .to_string();
    assert!(invalid(&sb.post(oc, &v1).await.1), "a version 1 UUID");
    let no_patient = body.replace(&format!("<patientId><c:id>{}</c:id><c:type>{}</c:type></patientId>", id.raw(), id.oid()), "");
    assert!(invalid(&sb.post(c, &no_patient).await.1));
    // A GetUpdates without its timeStamp is a fault (that contract has no result to carry it).
    let (status, _) = sb.post(Contract::GetUpdates, &updates_body("riv:clinicalprocess:logistics:logistics", "", None).replace("<timeStamp></timeStamp>", "")).await;
    assert_eq!(status, 500);

    // HTTP level: wrong method, unknown service.
    let get = sb.client.get(sb.server.url(c)).send().await.unwrap();
    assert_eq!(get.status().as_u16(), 405);
    let nowhere = sb.client.post(format!("{}/clinicalprocess/nothing/GetNothing/1/rivtabp21", sb.server.base_url())).body("x").send().await.unwrap();
    assert_eq!(nowhere.status().as_u16(), 404);

    // A patient-id type that does not match the patient: no documents, not an error.
    let reserve = sb.pop.patient_id(archetype::ARTROS_RESERVE_NUMBER);
    let (_, text) = sb.post(c, &request_body(c, reserve.raw(), registerbrygga::model::OID_PERSONNUMMER, &Filter::default())).await;
    assert_eq!(result_code(&text), "OK");
    assert!(blocks(&text, "tns:careContact").is_empty());
    let text = sb.fetch(c, archetype::ARTROS_RESERVE_NUMBER, &Filter::default()).await;
    assert!(!blocks(&text, "tns:careContact").is_empty(), "a reserve number is served under its own OID");

    assert!(sb.server.requests().rejected >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_the_client_certificate_is_refused() {
    let sb = sandbox(spec(81, 5), JournalOptions::default()).await;
    let c = Contract::GetCareContacts;
    let id = sb.pop.patient_id(0);
    let body = envelope(NATIONAL_LOGICAL_ADDRESS, &request_body(c, id.raw(), id.oid(), &Filter::default()));
    let mut settings = sandbox_client_settings(&sb.certs);
    settings.client_cert_file = None;
    settings.client_key = None;
    let anonymous = http_client(&settings, Duration::from_secs(5), false).unwrap();
    let refused = anonymous.post(sb.server.url(c)).header("SOAPAction", c.soap_action()).body(body.clone()).send().await;
    assert!(refused.is_err(), "the journal must refuse a client without a certificate");
    // A certificate from another CA is refused as well.
    let other = tempfile::tempdir().unwrap();
    let foreign = CertSet::ensure(other.path()).unwrap();
    let mut settings = sandbox_client_settings(&foreign);
    settings.ca_file = Some(sb.certs.ca.clone());
    let stranger = http_client(&settings, Duration::from_secs(5), false).unwrap();
    assert!(stranger.post(sb.server.url(c)).header("SOAPAction", c.soap_action()).body(body.clone()).send().await.is_err());
    assert_eq!(sb.server.requests().total, 0, "nothing reached the service");
    let (status, _) = sb.post_raw(c, Some(&c.soap_action()), body).await;
    assert_eq!(status, 200);
    let handle = sb.server;
    let url = handle.url(c);
    handle.shutdown().await;
    assert!(sb.client.post(url).body("x").send().await.is_err(), "stopped");
}

#[test]
fn deliberately_bad_items_appear_only_when_asked_for() {
    let mut s = spec(91, 300);
    s.bad_item_share = 0.02;
    let pop: SharedPopulation = Arc::new(Population::generate(&s));
    let truth = pop.truth();
    let mut invalid_ids = 0;
    let mut unknown_systems = 0;
    for p in truth.patients() {
        for (doc, defect) in p.bad_items() {
            match defect {
                registerbrygga::sandbox::journal::Defect::InvalidPersonnummer => {
                    invalid_ids += 1;
                    let contract = if doc.contains("-K") { Contract::GetCareContacts } else { Contract::GetDiagnosis };
                    let xml = String::from_utf8(render_patient(&pop, contract, p.index)).unwrap();
                    let at = xml.find(&format!("<documentId>{doc}</documentId>")).unwrap();
                    let from = xml[at..].find("<patientId><id>").unwrap() + at + "<patientId><id>".len();
                    let id = xml[from..from + 12].to_string();
                    assert_ne!(id, p.id.raw());
                    assert!(registerbrygga::model::PatientId::parse_national(&id, today()).is_err(), "the check digit is wrong");
                }
                registerbrygga::sandbox::journal::Defect::UnknownCodeSystem => unknown_systems += 1,
            }
        }
        // Bad items never touch SAR answers or objections.
        assert!(p.observations.iter().filter(|o| o.defect.is_some()).all(|o| o.episode.is_none() && o.term != obs::REGISTER_OBJECTION));
    }
    assert!(invalid_ids > 5 && unknown_systems > 5, "{invalid_ids} invalid ids, {unknown_systems} unknown code systems");
    let xml: String = (0..300).map(|p| String::from_utf8(render_patient(&pop, Contract::GetActivities, p)).unwrap()).collect();
    assert!(xml.contains(registerbrygga::sandbox::journal::UNKNOWN_CODE_SYSTEM));
    // The SAR expectation is the same with and without bad items.
    let clean = Population::generate(&spec(91, 300));
    assert_eq!(clean.truth().sar_expected(), truth.sar_expected());
}

#[test]
fn the_patient_list_names_every_patient() {
    let pop = Population::generate(&spec(3, 50));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("patienter.txt");
    assert_eq!(pop.write_patient_list(&path).unwrap(), 50);
    let text = std::fs::read_to_string(path).unwrap();
    let ids: Vec<_> = text.lines().collect();
    assert_eq!(ids.len(), 50);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(pop.index_of(id), Some(i));
    }
}

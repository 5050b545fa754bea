//! `pvk import`: SKR's yearly spreadsheets → a rule set. The test writes fixture workbooks in the
//! documented layout (src/registers/pvk/import.rs; a real .xlsx, built here as the zip of XML
//! parts it is, plus one sheet as .csv), imports them, and checks that the imported rule set
//! computes exactly what the hand-written sandbox rules compute on the sandbox population. An
//! unknown layout fails naming the sheet or column it expected.

use registerbrygga::config::ConnectorDef;
use registerbrygga::registers::pvk::import::{self, Layout};
use registerbrygga::registers::pvk::{ComputeInput, DrugList, Listing, PatientRecords, PvkEngine};
use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec};
use registerbrygga::sandbox::vocabulary::{LOCAL_TERMS, REHAB_UNITS, VC_UNITS};
use std::io::Write;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A minimal .xlsx workbook: one worksheet per (name, rows), every cell an inline string.
fn write_xlsx(path: &Path, sheets: &[(&str, Vec<Vec<String>>)]) {
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let esc = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let mut types = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>"#);
    let mut wb = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><sheets>"#);
    let mut rels = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#);
    for (i, (name, rows)) in sheets.iter().enumerate() {
        let n = i + 1;
        types.push_str(&format!(r#"<Override PartName="/xl/worksheets/sheet{n}.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#));
        wb.push_str(&format!(r#"<sheet name="{}" sheetId="{n}" r:id="rId{n}"/>"#, esc(name)));
        rels.push_str(&format!(r#"<Relationship Id="rId{n}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet{n}.xml"/>"#));
        let mut ws = String::from(r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><sheetData>"#);
        for (r, row) in rows.iter().enumerate() {
            ws.push_str(&format!(r#"<row r="{}">"#, r + 1));
            for (c, v) in row.iter().enumerate() {
                if v.is_empty() {
                    continue;
                }
                let col = (b'A' + c as u8) as char;
                ws.push_str(&format!(r#"<c r="{col}{}" t="inlineStr"><is><t>{}</t></is></c>"#, r + 1, esc(v)));
            }
            ws.push_str("</row>");
        }
        ws.push_str("</sheetData></worksheet>");
        z.start_file(format!("xl/worksheets/sheet{n}.xml"), opts).unwrap();
        z.write_all(ws.as_bytes()).unwrap();
    }
    types.push_str("</Types>");
    wb.push_str("</sheets></workbook>");
    rels.push_str("</Relationships>");
    for (name, body) in [
        ("[Content_Types].xml", types),
        ("_rels/.rels", r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#.to_string()),
        ("xl/workbook.xml", wb),
        ("xl/_rels/workbook.xml.rels", rels),
    ] {
        z.start_file(name, opts).unwrap();
        z.write_all(body.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

fn row(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|s| s.to_string()).collect()
}

const HEADER: [&str; 14] = [
    "ID",
    "Indikator",
    "Enhet",
    "Typ",
    "Diagnoslistor",
    "Åtgärdslistor",
    "Läkemedelslista",
    "Läkemedel minst antal",
    "Läkemedel minst dagar",
    "Läkemedel villkor",
    "Ålder från",
    "Period månader",
    "Mätperiod månader",
    "Nyinsjuknad månader",
];

/// The indicator sheet: the sandbox rule set's definitions of these indicators, as SKR's
/// förteckning would state them. `without` leaves indicators out (an older year).
fn indicator_rows(without: &[&str]) -> Vec<Vec<String>> {
    let all = vec![
        row(&["Ar11", "Förekomst av diagnos höft- eller knäartros (rehabenhet)", "Rehab", "Förekomst", "Artros höft/knä"]),
        row(&["Ar12", "Andel patienter med artros som deltagit i artrosskola (rehabenhet)", "Rehab", "Andel", "Artros höft/knä", "Artrosskola"]),
        row(&["Ar13", "Andel patienter med artros som fått handledd träning (rehabenhet)", "Rehab", "Andel", "Artros höft/knä", "Handledd träning"]),
        row(&["Ar03", "Andel patienter med artros som deltagit i artrosskola (vårdcentral)", "VC", "Andel", "Artros höft/knä", "Artrosskola"]),
        row(&["T/S11", "Förekomst av diagnos stroke (rehabenhet)", "Rehab", "Förekomst", "Stroke"]),
        row(&["KOL13", "Energibesparande tekniker (rehabenhet)", "Rehab", "Andel", "KOL", "Energibesparande", "KOL underhåll", "2", "", "och"]),
        row(&["KOL15", "Andel KOL-patienter som fått patientutbildning (rehabenhet)", "Rehab", "Andel", "KOL", "Patientutbildning KOL"]),
        row(&[
            "Os11",
            "Nytillkommen hög frakturrisk, träning/fall/balans (rehabenhet)",
            "Rehab",
            "Andel",
            "Osteoporos, Fragilitetsfraktur",
            "Träning fall balans",
            "Kortison",
            "1",
            "90",
            "eller",
            "50",
            "12",
            "12",
            "12",
        ]),
        row(&["Ink03", "Bäckenbottenträning", "VC", "Andel", "Urininkontinens", "Bäckenbottenträning", "", "", "", "", "20"]),
        row(&["Sm11", "Förekomst av diagnos långvarig smärta (rehabenhet)", "Rehab", "Förekomst", "Långvarig smärta"]),
    ];
    let mut out = vec![row(&HEADER)];
    out.extend(all.into_iter().filter(|r| !without.contains(&r[0].as_str())));
    out
}

/// The code list sheet ("Diagnoslistor" and action lists), the sandbox's codes.
fn code_rows(artros: &[&str]) -> Vec<Vec<String>> {
    let mut out = vec![row(&["Lista", "Kodverk", "Kod", "Benämning"])];
    let mut add = |list: &str, system: &str, codes: &[&str]| {
        for c in codes {
            out.push(row(&[list, system, c, ""]));
        }
    };
    add("Artros höft/knä", "ICD-10-SE", artros);
    add("Stroke", "ICD-10-SE", &["I61", "I63", "I64"]);
    add("KOL", "ICD-10-SE", &["J44"]);
    add("Osteoporos", "ICD-10-SE", &["M80", "M81"]);
    add("Fragilitetsfraktur", "ICD-10-SE", &["S72.0", "S52.5", "S32.0", "S22.0"]);
    add("Urininkontinens", "ICD-10-SE", &["N39.3", "N39.4", "R32"]);
    add("Långvarig smärta", "ICD-10-SE", &["R52.2A", "R52.2B", "R52.2C"]);
    add("KOL underhåll", "ATC", &["R03AK", "R03AL", "R03BB", "R03AC12", "R03AC13", "R03BA"]);
    add("Kortison", "ATC", &["H02AB"]);
    add("Artrosskola", LOCAL_TERMS, &["ARTROSSKOLA"]);
    add("Handledd träning", LOCAL_TERMS, &["HANDLEDD-TRANING"]);
    add("Energibesparande", LOCAL_TERMS, &["ENERGIBESPARANDE-TEKNIK"]);
    add("Patientutbildning KOL", LOCAL_TERMS, &["PATIENTUTBILDNING-KOL"]);
    add("Träning fall balans", LOCAL_TERMS, &["HANDLEDD-TRANING", "FALLPREVENTION", "BALANSTRANING"]);
    add("Bäckenbottenträning", LOCAL_TERMS, &["BACKENBOTTENTRANING"]);
    out
}

fn connector(dir: &Path, units: &[&str], options: &str) -> ConnectorDef {
    let units = units.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    let text = format!("name = \"pvk\"\nkind = \"pvk\"\nsource = \"journal\"\nregister = \"pvk\"\nschedule = \"0 2 * * *\"\nunits = [{units}]\npatients = {{ mode = \"all\" }}\n[options]\n{options}\n");
    let mut c: ConnectorDef = toml::from_str(&text).unwrap();
    c.dir = dir.to_path_buf();
    c
}

/// The sandbox population's canonical records, as the RIV-TA consumer reads them.
fn sandbox_patients(pop: &std::sync::Arc<Population>) -> Vec<PatientRecords> {
    let ctx = registerbrygga::sources::riv::ParseContext::new("import-test", pop.spec().today);
    let pseudo = registerbrygga::crypto::Pseudonymizer::new([3u8; 32]);
    let mut out = vec![];
    for i in 0..pop.len() {
        let mut records = vec![];
        for c in [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations] {
            if let Ok(parsed) = registerbrygga::sources::riv::parse_bytes(&render_patient(pop, c, i), "sandbox", &ctx) {
                records.extend(parsed.records);
            }
        }
        let Some(first) = records.first() else { continue };
        let patient = first.patient().clone();
        out.push(PatientRecords { patient_key: pseudo.patient_key(&patient), patient, records });
    }
    out
}

#[test]
fn imported_spreadsheets_compute_what_the_hand_written_rules_compute() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("skr");
    std::fs::create_dir_all(&files).unwrap();
    let rules_dir = dir.path().join("connector/rules");
    // 2025: an older förteckning (no Ink03; artros without hip) as a workbook, lists as CSV.
    let f2025 = files.join("Indikatorer-2025.xlsx");
    write_xlsx(&f2025, &[("Indikatorer", indicator_rows(&["Ink03"])), ("Om filen", vec![row(&["SKR, Primärvårdskvalitet"])])]);
    let lists_2025 = files.join("2025").join("Kodlistor.csv");
    std::fs::create_dir_all(lists_2025.parent().unwrap()).unwrap();
    std::fs::write(&lists_2025, code_rows(&["M17"]).iter().map(|r| r.join(";")).collect::<Vec<_>>().join("\n")).unwrap();
    let r = import::run(&[f2025, lists_2025], &Layout::default(), 2025, &rules_dir).unwrap();
    assert_eq!(r.indicators, 9);
    assert!(r.diff.is_none());
    // 2026: both sheets in workbooks, as SKR ships them.
    let f2026 = files.join("Indikatorer-2026.xlsx");
    let d2026 = files.join("Diagnoslistor-2026.xlsx");
    write_xlsx(&f2026, &[("Indikatorer", indicator_rows(&[]))]);
    write_xlsx(&d2026, &[("Kodlistor", code_rows(&["M16", "M17"]))]);
    let r = import::run(&[f2026.clone(), d2026.clone()], &Layout::default(), 2026, &rules_dir).unwrap();
    assert_eq!(r.written, rules_dir.join("2026.toml"));
    assert_eq!(r.indicators, 10);
    let (_, diff) = r.diff.expect("a diff against 2025");
    assert!(diff.contains(&"+ indikator Ink03".to_string()), "{diff:#?}");
    assert!(diff.iter().any(|l| l.starts_with("~ kodlista artros_hoft_kna: +[M16]")), "{diff:#?}");
    assert!(diff.iter().any(|l| l.starts_with("+ kodlista backenbottentraning")), "{diff:#?}");

    // Every code list is verified and cites file, sheet and rows.
    let (rs, warnings) = registerbrygga::registers::pvk::rules::load_file(&rules_dir.join("2026.toml")).unwrap();
    assert!(rs.verified && warnings.is_empty(), "{warnings:#?}");
    for cs in &rs.code_sets {
        assert!(cs.verified, "{}", cs.name);
        assert!(cs.source.starts_with("Diagnoslistor-2026.xlsx, Kodlistor, rad "), "{}: {}", cs.name, cs.source);
    }
    assert!(rs.indicators.iter().all(|i| i.windows_source.as_deref().unwrap().starts_with("Indikatorer-2026.xlsx, sheet 'Indikatorer', row ")));
    assert_eq!(rs.indicator("TS11").unwrap().id, "T/S11");

    // The same numbers as the hand-written sandbox rules, on the sandbox population.
    let today = registerbrygga::pipeline::today_stockholm();
    let pop = std::sync::Arc::new(Population::generate(&PopulationSpec::new(11, 600, today)));
    let patients = sandbox_patients(&pop);
    let pseudo = registerbrygga::crypto::Pseudonymizer::new([3u8; 32]);
    let listing = Listing::from_rows(pop.listing().into_iter().map(|(id, vc, _)| (id, vc)), today, &pseudo);
    let rx = registerbrygga::sandbox::pvk::prescriptions(&pop);
    let drugs = DrugList::from_prescriptions(rx.iter().map(|r| (r.id.clone(), r.atc.clone(), r.date, Some(r.days), Some(r.unit.clone()))), today);
    let units: Vec<&str> = REHAB_UNITS.iter().chain(VC_UNITS.iter()).copied().collect();
    let vc = format!("vardcentraler = [{}]", VC_UNITS.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", "));
    let hand = PvkEngine::load(&connector(&repo().join("connectors/primarvardskvalitet"), &units, &format!("rule_files = [\"sandbox-2026.toml\"]\n{vc}"))).unwrap();
    let imported = PvkEngine::load(&connector(&dir.path().join("connector"), &units, &format!("rule_years = [2026]\n{vc}"))).unwrap();
    let hsa: Vec<registerbrygga::model::HsaId> = units.iter().map(|u| registerbrygga::model::HsaId::parse(u).unwrap()).collect();
    let months: Vec<(i32, u32)> = (0..13).rev().map(|i| registerbrygga::store::add_months(chrono::Datelike::year(&today), chrono::Datelike::month(&today), -i)).collect();
    let input = ComputeInput { patients: &patients, listing: Some(&listing), drugs: Some(&drugs), units: &hsa, months: &months, today };
    let (a, b) = (hand.compute(&input), imported.compute(&input));
    let codes: Vec<&str> = imported.rule_sets[0].indicators.iter().map(|i| i.register_code.as_str()).collect();
    let key = |r: &registerbrygga::store::PvkResultRow| (r.unit.clone(), r.year, r.month, r.indicator.clone());
    let want: std::collections::BTreeMap<_, _> = a.results.iter().filter(|r| codes.contains(&r.indicator.as_str())).map(|r| (key(r), (r.computable, r.numerator, r.denominator))).collect();
    let got: std::collections::BTreeMap<_, _> = b.results.iter().map(|r| (key(r), (r.computable, r.numerator, r.denominator))).collect();
    assert_eq!(got.len(), want.len());
    let differ: Vec<_> = want.iter().filter(|(k, v)| got.get(*k) != Some(*v)).take(10).collect();
    assert!(differ.is_empty(), "imported rules differ from the hand-written ones: {differ:?}");
    let with_patients = got.values().filter(|v| v.1.is_some_and(|n| n > 0)).count();
    assert!(with_patients > 50, "the comparison has substance: {with_patients} cells with patients");
    for code in codes {
        assert!(got.iter().any(|(k, v)| k.3 == code && v.0), "{code} is computed");
    }
}

#[test]
fn an_unknown_layout_fails_naming_the_sheet_or_column_expected() {
    let dir = tempfile::tempdir().unwrap();
    let rules_dir = dir.path().join("rules");
    // No "Typ" column.
    let f = dir.path().join("Indikatorer.xlsx");
    let mut rows = indicator_rows(&[]);
    rows[0][3] = "Indikatortyp".into();
    write_xlsx(&f, &[("Indikatorer", rows), ("Kodlistor", code_rows(&["M16", "M17"]))]);
    let err = format!("{:#}", import::run(&[f.clone()], &Layout::default(), 2026, &rules_dir).unwrap_err());
    assert!(err.contains("Indikatorer.xlsx, sheet 'Indikatorer': no column 'Typ'") && err.contains("Indikatortyp"), "{err}");
    // The layout is configuration: naming the column makes the same file import.
    let mut layout = Layout::default();
    layout.columns.kind = "Indikatortyp".into();
    assert!(import::run(&[f], &layout, 2026, &rules_dir).is_ok());
    // No code list sheet at all.
    let g = dir.path().join("Bara-indikatorer.xlsx");
    write_xlsx(&g, &[("Indikatorer", indicator_rows(&[]))]);
    let err = format!("{:#}", import::run(&[g], &Layout::default(), 2027, &rules_dir).unwrap_err());
    assert!(err.contains("no sheet 'Kodlistor'") && err.contains("Indikatorer (Bara-indikatorer.xlsx)"), "{err}");
    assert!(!rules_dir.join("2027.toml").exists(), "nothing is written for a file that does not import");
    // Not a spreadsheet.
    let h = dir.path().join("förteckning.pdf");
    std::fs::write(&h, b"%PDF").unwrap();
    assert!(format!("{:#}", import::run(&[h], &Layout::default(), 2026, &rules_dir).unwrap_err()).contains("give .xlsx or .csv"));
}

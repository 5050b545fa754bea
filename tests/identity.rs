//! Identity validation (research/sources.md §4): personnummer and samordningsnummer in every
//! accepted written form, the century and `+` rules, the Luhn check, and reserve numbers.

use chrono::NaiveDate;
use registerbrygga::model::{HsaId, IdError, IdKind, PatientId, OID_PERSONNUMMER, OID_SAMORDNINGSNUMMER};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
}

/// (input, kind, normalised 12 digits)
const VALID: &[(&str, IdKind, &str)] = &[
    // 12 digits, with and without separator.
    ("191212121212", IdKind::Personnummer, "191212121212"),
    ("19121212-1212", IdKind::Personnummer, "191212121212"),
    ("198112189876", IdKind::Personnummer, "198112189876"),
    // 10 digits: the latest century that does not put the birth date in the future.
    ("1212121212", IdKind::Personnummer, "201212121212"),
    ("121212-1212", IdKind::Personnummer, "201212121212"),
    ("8112189876", IdKind::Personnummer, "198112189876"),
    ("811218-9876", IdKind::Personnummer, "198112189876"),
    ("9912311231", IdKind::Personnummer, "199912311231"),
    ("040229-1231", IdKind::Personnummer, "200402291231"),
    // 2026-11-22 is in the past (yesterday): this century.
    ("2611220019", IdKind::Personnummer, "202611220019"),
    // '+': a hundred years more.
    ("121212+1212", IdKind::Personnummer, "191212121212"),
    ("420101+0016", IdKind::Personnummer, "184201010016"),
    ("000228+1236", IdKind::Personnummer, "190002281236"),
    // Samordningsnummer: day + 60.
    ("701063-2391", IdKind::Samordningsnummer, "197010632391"),
    ("7010632391", IdKind::Samordningsnummer, "197010632391"),
    ("197010632391", IdKind::Samordningsnummer, "197010632391"),
    ("19701063-2391", IdKind::Samordningsnummer, "197010632391"),
    // Whitespace around is tolerated.
    (" 191212121212 ", IdKind::Personnummer, "191212121212"),
];

const INVALID: &[(&str, IdError)] = &[
    ("", IdError::Empty),
    ("19121212121", IdError::Format),                // 11 digits
    ("1912121212123", IdError::Format),              // 13 digits
    ("19121212-121", IdError::Format),               // separator in the wrong place
    ("1912-12121212", IdError::Format),
    ("19121212 1212", IdError::Format),
    ("19121212X212", IdError::Format),
    ("191212121213", IdError::CheckDigit),           // Luhn
    ("121212-1213", IdError::CheckDigit),
    ("701063-2392", IdError::CheckDigit),
    ("191213321215", IdError::Date),                 // month 13 (or fails Luhn first)
    ("19121212+1212", IdError::PlusWithCentury),     // '+' only in 10-digit form
    ("171212121212", IdError::Century),
    ("211212121212", IdError::Century),
    ("191901010007", IdError::Serial),               // serial 000
    ("202812121214", IdError::Future),
    ("000229+1235", IdError::Date),                  // 1900 was not a leap year
];

#[test]
fn valid_forms_are_accepted_and_normalised() {
    for (input, kind, norm) in VALID {
        let id = PatientId::parse_national(input, today()).unwrap_or_else(|e| panic!("{input:?} should be valid: {e}"));
        assert_eq!(id.kind(), *kind, "{input}");
        assert_eq!(id.national_12(), Some(*norm), "{input}");
        assert!(id.is_national());
    }
}

#[test]
fn invalid_forms_are_refused_with_the_reason() {
    for (input, expected) in INVALID {
        let got = PatientId::parse_national(input, today());
        match got {
            Err(e) => {
                // Dates and check digits interact: an impossible date may also fail Luhn first;
                // both are refusals. Otherwise the reason must be exactly the expected one.
                if *expected == IdError::Date {
                    assert!(matches!(e, IdError::Date | IdError::CheckDigit), "{input:?}: {e:?}");
                } else {
                    assert_eq!(&e, expected, "{input:?}");
                }
                // The reason never repeats the value.
                assert!(!e.to_string().contains(input.trim()) || input.is_empty(), "{input:?}: {e}");
            }
            Ok(_) => panic!("{input:?} should be refused ({expected:?})"),
        }
    }
}

#[test]
fn impossible_dates_with_valid_check_digits_are_refused() {
    // Build numbers whose Luhn digit is right but whose date is impossible.
    use registerbrygga::model::luhn_check_digit;
    for body in ["021330123", "020230123", "230229123", "011300123", "010100123"] {
        let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
        let full = format!("{body}{}", luhn_check_digit(&digits));
        assert_eq!(PatientId::parse_national(&full, today()), Err(IdError::Date), "{full}");
    }
    // Samordningsnummer with day 60 (= day 0) or 92 (= 32) are impossible too.
    for body in ["700160123", "700192123"] {
        let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
        let full = format!("{body}{}", luhn_check_digit(&digits));
        assert_eq!(PatientId::parse_national(&full, today()), Err(IdError::Date), "{full}");
    }
}

#[test]
fn oid_decides_the_kind_and_reserve_numbers_are_kept_and_flagged() {
    let reserve = vec!["1.2.752.74.9.2".to_string()];
    let p = PatientId::parse_with_oid("191212121212", OID_PERSONNUMMER, &reserve, today()).unwrap();
    assert_eq!(p.kind(), IdKind::Personnummer);
    let s = PatientId::parse_with_oid("197010632391", OID_SAMORDNINGSNUMMER, &reserve, today()).unwrap();
    assert_eq!(s.kind(), IdKind::Samordningsnummer);
    assert_eq!(s.oid(), OID_SAMORDNINGSNUMMER);
    // Värmland's reserve format yyyymmddSNNC is kept, flagged, and has no national form.
    let r = PatientId::parse_with_oid("19500101S123", "1.2.752.74.9.2", &reserve, today()).unwrap();
    assert_eq!(r.kind(), IdKind::Reserve);
    assert!(!r.is_national());
    assert_eq!(r.national_12(), None, "a reserve number is never sent to a register that takes only national ids");
    assert_eq!(r.oid(), "1.2.752.74.9.2");
    assert_eq!(r.birth_date(), NaiveDate::from_ymd_opt(1950, 1, 1));
    // An OID we were not told about is refused, as is a malformed reserve number.
    assert_eq!(PatientId::parse_with_oid("19500101S123", "1.2.752.99.9.9", &reserve, today()), Err(IdError::UnknownType));
    assert_eq!(PatientId::parse_with_oid("19-50", "1.2.752.74.9.2", &reserve, today()), Err(IdError::ReserveFormat));
    // Personnummer OID with an invalid number: refused with the reason.
    assert_eq!(PatientId::parse_with_oid("191212121213", OID_PERSONNUMMER, &reserve, today()), Err(IdError::CheckDigit));
}

#[test]
fn derived_facts() {
    let p = PatientId::parse_national("19121212-1212", today()).unwrap();
    assert_eq!(p.birth_date(), NaiveDate::from_ymd_opt(1912, 12, 12));
    assert_eq!(p.age_at(today()), Some(113));
    assert_eq!(p.is_female(), Some(false)); // 9th digit 1: odd = man
    let s = PatientId::parse_national("701063-2391", today()).unwrap();
    assert_eq!(s.birth_date(), NaiveDate::from_ymd_opt(1970, 10, 3));
    assert_eq!(s.is_female(), Some(false)); // serial 239: 9 is odd = man
}

#[test]
fn hsa_ids() {
    assert!(HsaId::parse("SE2321000073-1234").is_ok());
    assert!(HsaId::parse("TSE2321000214-13F8").is_ok());
    for bad in ["SE2321000073", "SE232100007-1", "SE2321000073-Å1", "se2321000073-1", "SE2321000073-", "SE2321000073-ABCDEFGHIJKLMNOPQRST"] {
        assert!(HsaId::parse(bad).is_err(), "{bad}");
    }
}

/// HSA ids in the 12-digit organisation-number form (`SE16` + the 10 digits, e.g. Inera's
/// `SE165565594230-1000` in the RIV-TA service descriptions) are accepted wherever a journal
/// document carries one, and kept exactly as written; the 10-digit form keeps working.
#[test]
fn journal_documents_with_both_hsa_id_forms_are_read_and_kept_as_written() {
    use registerbrygga::sandbox::journal::{render_patient, Contract, Population, PopulationSpec};
    use registerbrygga::sources::riv::{parse_bytes, ParseContext};
    let pop = std::sync::Arc::new(Population::generate(&PopulationSpec::new(17, 12, today())));
    let ctx = ParseContext::new("c", today());
    let mut checked = 0;
    for patient in 0..12 {
        for contract in [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations] {
            let doc = render_patient(&pop, contract, patient);
            let ten = parse_bytes(&doc, "doc", &ctx).expect("the 10-digit form reads");
            let units10: Vec<String> = ten.records.iter().filter_map(|r| r.unit().map(|u| u.as_str().to_string())).collect();
            if units10.is_empty() {
                continue;
            }
            // Every HSA id of the document in the 12-digit form.
            let text = String::from_utf8(doc).unwrap();
            let re = regex::Regex::new(r">(T?SE)([0-9]{10})-").unwrap();
            let twelve_text = re.replace_all(&text, ">${1}16${2}-").to_string();
            assert_ne!(twelve_text, text);
            let twelve = parse_bytes(twelve_text.as_bytes(), "doc", &ctx).unwrap_or_else(|e| panic!("the 12-digit form was refused: {e:?}"));
            // Nothing more is refused than in the 10-digit form (the sandbox's local code systems
            // are unknown to a bare parse context either way).
            assert_eq!(twelve.refused.len(), ten.refused.len(), "{:?}", twelve.refused);
            assert!(twelve.refused.iter().all(|r| !r.field.contains("HSA")), "{:?}", twelve.refused);
            assert_eq!(twelve.records.len(), ten.records.len());
            let units12: Vec<String> = twelve.records.iter().filter_map(|r| r.unit().map(|u| u.as_str().to_string())).collect();
            let expected: Vec<String> = units10.iter().map(|u| u.replacen("SE", "SE16", 1)).collect();
            assert_eq!(units12, expected, "kept as written");
            checked += 1;
        }
    }
    assert!(checked >= 4, "documents with units were checked: {checked}");
    for id in ["SE165565594230-1000", "SE162321000451-0001", "SE2321000016-12ZX"] {
        assert_eq!(HsaId::parse(id).unwrap().as_str(), id);
    }
}

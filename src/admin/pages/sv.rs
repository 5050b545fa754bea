//! Swedish page text for the English messages the daemon stores (PVK notes, quarantine reasons,
//! retraction reasons). The API, the logs and the stored rows keep the English original; the
//! pages show this translation. Patterns are matched anywhere in the message, so composed
//! messages ("field: reason; reason") are translated part by part. The page test
//! (`tests/admin.rs`, every_page_of_a_demo_like_run_is_swedish) fails when an English message
//! from the code reaches a page untranslated.

use regex::Regex;
use std::sync::OnceLock;

/// (English pattern, Swedish replacement); `$1`… refer to the pattern's groups.
const TABLE: &[(&str, &str)] = &[
    // PVK result notes (registers/pvk/engine.rs, aggregate.rs).
    (r"suppressed: a count is below (\d+) \(small-cell protection\); kept locally, not sent", "undertryckt: ett antal är under $1 (skydd för små tal); sparas lokalt, skickas inte"),
    (r"small cell: a count is below (\d+) \(flagged; sent as computed\)", "litet tal: ett antal är under $1 (markerat; skickas som beräknat)"),
    (r"partial month: data up to (\S+)", "ofullständig månad: data till och med $1"),
    (r"suppressed \(small-cell protection\)", "undertryckt (skydd för små tal)"),
    // Retraction reasons (outbox).
    (r"patient objects to quality-register reporting \(opt-out\)", "patienten motsätter sig registrering i kvalitetsregister"),
    (r"the journal no longer supports this registration \(document nullified or changed\)", "journalen stöder inte längre registreringen (dokumentet makulerat eller ändrat)"),
    // Journal parsing (sources/riv/parse.rs, sources/warehouse).
    (r"code system (\S+) is not in known_code_systems", "kodsystemet $1 är okänt (finns inte i known_code_systems)"),
    (r"mandatory element is missing \(at least one ([^)]+)\)", "obligatoriskt element saknas (minst ett $1)"),
    (r"mandatory element is missing", "obligatoriskt element saknas"),
    (r"mandatory element is empty", "obligatoriskt element är tomt"),
    (r"element is in namespace (\S+), expected (\S+)", "elementet ligger i namnrymden $1, väntad $2"),
    (r"element is in (\S+), not the namespace the contract requires", "elementet ligger i $1, inte i kontraktets namnrymd"),
    (r"element not in the contract; ignored", "elementet finns inte i kontraktet; ignoreras"),
    (r"not a valid date and time", "inte ett giltigt datum med tid"),
    (r"not a valid date of birth", "inte ett giltigt födelsedatum"),
    (r"not a valid date", "inte ett giltigt datum"),
    (r"date lies in the future", "datumet ligger i framtiden"),
    (r"given only to the year or month; a day is needed", "anges bara med år eller månad; en dag behövs"),
    (r"has neither start nor end", "har varken start eller slut"),
    (r"has none of pq, ts, ivl_ts, cv", "saknar värde (pq, ts, ivl_ts eller cv)"),
    (r"has more than one of pq, ts, ivl_ts, cv", "har flera värden (pq, ts, ivl_ts, cv)"),
    (r"not one of the time formats of the contract", "inte ett av kontraktets tidsformat"),
    (r"not a timestamp of the form YYYYMMDDhhmmss", "inte en tidpunkt på formen ÅÅÅÅMMDDttmmss"),
    (r"not an ICD-10-SE code", "inte en ICD-10-SE-kod"),
    (r"not a decimal number", "inte ett decimaltal"),
    (r"not a boolean \(true/false\)", "inte ett sanningsvärde (true/false)"),
    (r"not Huvuddiagnos or Bidiagnos", "varken huvuddiagnos eller bidiagnos"),
    (r"no diagnosis code \(optional in the contract, but a diagnosis without a code cannot be used\)", "diagnoskod saknas (frivillig i kontraktet, men en diagnos utan kod kan inte användas)"),
    (r"no diagnosis code", "diagnoskod saknas"),
    (r"no code system", "kodsystem saknas"),
    (r"negated observations are not supported", "negerade observationer stöds inte"),
    (r"the patient differs from the patient asked for", "patienten är en annan än den som efterfrågades"),
    (r"unknown patient identity type \(OID\); a regional reserve-number OID must be listed in reserve_oids", "okänd typ av patientidentitet (OID); ett regionalt reservnummers OID ska stå i reserve_oids"),
    (r"invalid patient identity", "ogiltig patientidentitet"),
    (r"not a valid HSA id", "inte ett giltigt HSA-id"),
    (r"does not match its format", "följer inte sitt format"),
    (r"no keyword table \(keywords.toml in the connector folder\): the note's keywords cannot be read", "ingen sökordstabell (keywords.toml i kopplingens mapp): anteckningens sökord kan inte läsas"),
    (r"check digit does not match \(Luhn\)", "kontrollsiffran stämmer inte (Luhn)"),
    (r"wrong length or characters \(expected 10 or 12 digits, optionally with '-' or '\+'\)", "fel längd eller tecken (10 eller 12 siffror, eventuellt med '-' eller '+')"),
    (r"serial number 000 is not issued", "födelsenummer 000 delas inte ut"),
    (r"century 18, 19 or 20 required", "århundradet ska vara 18, 19 eller 20"),
    (r"a 12-digit identity must not carry a '\+' separator", "en tolvsiffrig identitet får inte ha '+' som skiljetecken"),
    (r"birth date lies in the future", "födelsedatumet ligger i framtiden"),
    (r"unknown identity type \(OID\)", "okänd identitetstyp (OID)"),
    (r"reserve number has an unexpected format", "reservnumret har ett oväntat format"),
    (r"empty identity", "tom identitet"),
];

fn compiled() -> &'static Vec<(Regex, &'static str)> {
    static C: OnceLock<Vec<(Regex, &'static str)>> = OnceLock::new();
    C.get_or_init(|| TABLE.iter().map(|(p, r)| (Regex::new(p).expect("valid pattern"), *r)).collect())
}

/// The Swedish page text of a stored message.
pub fn sv(msg: &str) -> String {
    let mut s = msg.to_string();
    for (re, rep) in compiled() {
        if re.is_match(&s) {
            s = re.replace_all(&s, *rep).into_owned();
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::sv;

    #[test]
    fn notes_and_reasons_become_swedish() {
        assert_eq!(
            sv("suppressed: a count is below 5 (small-cell protection); kept locally, not sent; partial month: data up to 2026-12-05"),
            "undertryckt: ett antal är under 5 (skydd för små tal); sparas lokalt, skickas inte; ofullständig månad: data till och med 2026-12-05"
        );
        assert_eq!(sv("code/@codeSystem: code system 2.25.1 is not in known_code_systems"), "code/@codeSystem: kodsystemet 2.25.1 är okänt (finns inte i known_code_systems)");
        assert_eq!(sv("redan svensk"), "redan svensk");
    }
}

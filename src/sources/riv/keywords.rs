//! Keyword (sökord) notes: a region's keyword table as data, and the extraction of keyword
//! values from a note's free text (`clinicalDocumentNoteText` of GetCareDocumentation 2.1).
//!
//! In Cambio Cosmic a physiotherapist documents structured answers (pain NRS, EQ-5D, the SAR
//! questions) as a keyword template; the national GetCareDocumentation contract carries such a
//! note as text, one keyword per line: `Heading: value`. Which headings a region uses, and how
//! they are spelt, is the region's own (research/sources.md §7.3: Cosmic keyword ids are not
//! public), so the table is a file in the connector folder (`connectors/<name>/keywords.toml`),
//! never code. Each keyword maps several spellings to one canonical term, with its value type,
//! unit and allowed answers.
//!
//! Headings are matched ignoring case, surrounding and repeated whitespace and a trailing
//! colon, so "Smärta (NRS) :" and "smärta  (nrs):" are one keyword. Lines whose heading is not in
//! the table are free text and left alone. A keyword that cannot be read (a value not allowed,
//! two different values in one note, text that does not parse as the keyword's type) is
//! refused on its own; the note's other keywords are kept. Refusal reasons name the keyword and
//! the rule, never the value written (answers are personal data).

use crate::model::{Code, ObservationValue};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

/// The keyword table's file name in a connector folder.
pub const FILE_NAME: &str = "keywords.toml";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueType {
    /// A number (decimal comma or point), optionally followed by the keyword's unit.
    Quantity,
    /// One of the keyword's allowed answers, mapped to a code.
    Code,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeywordFile {
    /// Code system of the terms and of coded answers (e.g. the region's keyword OID).
    code_system: String,
    #[serde(default, rename = "keyword")]
    keywords: Vec<KeywordDef>,
}

/// One keyword of the table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeywordDef {
    /// The canonical term code the keyword's answers are recorded under.
    pub term: String,
    /// The heading as written in the region's templates; every spelling in use.
    pub headings: Vec<String>,
    #[serde(rename = "type")]
    pub value_type: ValueType,
    /// Unit of a quantity (UCUM), carried on the observation.
    #[serde(default)]
    pub unit: Option<String>,
    /// Unit as written after the number in the note (e.g. "kg", "min/vecka"); accepted and dropped.
    #[serde(default)]
    pub unit_text: Vec<String>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
    /// Coded keywords: answer as written → code (in `code_system`).
    #[serde(default)]
    pub values: HashMap<String, String>,
}

/// A region's keyword table, ready for matching.
#[derive(Clone, Debug)]
pub struct KeywordTable {
    pub code_system: String,
    pub keywords: Vec<KeywordDef>,
    /// Normalised heading → index in `keywords`.
    by_heading: HashMap<String, usize>,
    /// Per keyword, normalised answer → code.
    answers: Vec<HashMap<String, String>>,
}

/// One keyword value read from a note.
#[derive(Clone, Debug, PartialEq)]
pub struct Extracted {
    pub term: Code,
    pub value: ObservationValue,
}

/// One keyword refused in a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeywordRefusal {
    pub term: String,
    /// The heading as the table spells it first (never the note's text).
    pub heading: String,
    pub reason: String,
}

/// What a note's text gave.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extraction {
    pub values: Vec<Extracted>,
    pub refused: Vec<KeywordRefusal>,
    /// Lines that were not a keyword of the table (free text); counted, not kept.
    pub other_lines: usize,
}

/// Lower case, whitespace collapsed, trimmed, a trailing colon dropped.
pub fn normalise(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for w in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(w.chars().flat_map(char::to_lowercase));
    }
    while out.ends_with(':') {
        out.pop();
        while out.ends_with(' ') {
            out.pop();
        }
    }
    out
}

impl KeywordTable {
    /// Read and check a table file.
    pub fn load(path: &Path) -> Result<KeywordTable> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the keyword table {}", path.display()))?;
        KeywordTable::parse(&text).with_context(|| format!("keyword table {}", path.display()))
    }

    /// The table of a connector folder, if it has one.
    pub fn for_connector(dir: &Path) -> Result<Option<std::sync::Arc<KeywordTable>>> {
        let p = dir.join(FILE_NAME);
        if !p.exists() {
            return Ok(None);
        }
        Ok(Some(std::sync::Arc::new(KeywordTable::load(&p)?)))
    }

    pub fn parse(text: &str) -> Result<KeywordTable> {
        let f: KeywordFile = toml::from_str(text)?;
        if f.code_system.trim().is_empty() {
            bail!("code_system: must not be empty");
        }
        let mut by_heading = HashMap::new();
        let mut answers = vec![];
        for (i, k) in f.keywords.iter().enumerate() {
            let at = format!("keyword[{i}] ({})", k.term);
            if k.term.trim().is_empty() {
                bail!("keyword[{i}].term: must not be empty");
            }
            if k.headings.is_empty() {
                bail!("{at}.headings: at least one heading is needed");
            }
            for h in &k.headings {
                let n = normalise(h);
                if n.is_empty() {
                    bail!("{at}.headings: an empty heading");
                }
                if let Some(j) = by_heading.insert(n, i) {
                    bail!("{at}.headings: `{h}` is already a heading of keyword[{j}] ({})", f.keywords[j].term);
                }
            }
            match k.value_type {
                ValueType::Code if k.values.is_empty() => bail!("{at}.values: a coded keyword needs its allowed values"),
                ValueType::Quantity if !k.values.is_empty() => bail!("{at}.values: a quantity keyword takes no coded values"),
                _ => {}
            }
            if let (Some(lo), Some(hi)) = (k.min, k.max) {
                if lo > hi {
                    bail!("{at}: min is greater than max");
                }
            }
            let mut a = HashMap::new();
            for (written, code) in &k.values {
                if a.insert(normalise(written), code.clone()).is_some() {
                    bail!("{at}.values: `{written}` is given twice (ignoring case and spaces)");
                }
            }
            answers.push(a);
        }
        Ok(KeywordTable { code_system: f.code_system, keywords: f.keywords, by_heading, answers })
    }

    /// The keyword a heading names (any spelling, any case).
    pub fn lookup(&self, heading: &str) -> Option<&KeywordDef> {
        self.by_heading.get(&normalise(heading)).map(|i| &self.keywords[*i])
    }

    /// The keyword of a term code.
    pub fn by_term(&self, term: &str) -> Option<&KeywordDef> {
        self.keywords.iter().find(|k| k.term == term)
    }

    /// Read every keyword of the table from a note's text.
    pub fn extract(&self, text: &str) -> Extraction {
        // Per keyword: the values read (in order) and whether one failed to parse.
        let mut found: Vec<(usize, Result<ObservationValue, String>)> = vec![];
        let mut other_lines = 0;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some((head, value)) = line.split_once(':') else {
                other_lines += 1;
                continue;
            };
            let Some(&i) = self.by_heading.get(&normalise(head)) else {
                other_lines += 1;
                continue;
            };
            let value = value.trim();
            // A template line left empty is a keyword not answered, not a fault.
            if value.is_empty() {
                continue;
            }
            found.push((i, self.value(i, value)));
        }
        let mut out = Extraction { other_lines, ..Extraction::default() };
        let mut order: Vec<usize> = vec![];
        for (i, _) in &found {
            if !order.contains(i) {
                order.push(*i);
            }
        }
        for i in order {
            let k = &self.keywords[i];
            let all: Vec<&Result<ObservationValue, String>> = found.iter().filter(|(j, _)| *j == i).map(|(_, v)| v).collect();
            let refuse = |reason: String| KeywordRefusal { term: k.term.clone(), heading: k.headings[0].clone(), reason };
            if let Some(Err(e)) = all.iter().find(|v| v.is_err()) {
                out.refused.push(refuse(e.clone()));
                continue;
            }
            let values: Vec<&ObservationValue> = all.iter().filter_map(|v| v.as_ref().ok()).collect();
            if values.iter().any(|v| *v != values[0]) {
                out.refused.push(refuse(format!("the note gives {} different values for this keyword", values.len())));
                continue;
            }
            out.values.push(Extracted { term: Code::new(&self.code_system, &k.term), value: values[0].clone() });
        }
        out
    }

    fn value(&self, i: usize, raw: &str) -> Result<ObservationValue, String> {
        let k = &self.keywords[i];
        match k.value_type {
            ValueType::Code => match self.answers[i].get(&normalise(raw)) {
                Some(code) => Ok(ObservationValue::Code { code: Code::new(&self.code_system, code) }),
                None => {
                    let mut allowed: Vec<&str> = k.values.keys().map(String::as_str).collect();
                    allowed.sort_unstable();
                    Err(format!("the value is not one of the allowed answers ({})", allowed.join(", ")))
                }
            },
            ValueType::Quantity => {
                let mut text = raw.trim();
                // A unit written after the number is accepted when it is the keyword's own.
                for u in k.unit_text.iter().map(String::as_str).chain(k.unit.as_deref()) {
                    if let Some(head) = strip_suffix_ignore_case(text, u) {
                        text = head.trim_end();
                        break;
                    }
                }
                let number = text.replace(',', ".");
                let value: f64 = match number.parse::<f64>() {
                    Ok(v) if v.is_finite() && !number.starts_with('+') => v,
                    _ => return Err("the value is not a number".into()),
                };
                if k.min.is_some_and(|lo| value < lo) || k.max.is_some_and(|hi| value > hi) {
                    let show = |b: Option<f64>| b.map(|v| v.to_string()).unwrap_or_else(|| "…".into());
                    return Err(format!("the value is outside the allowed range {}–{}", show(k.min), show(k.max)));
                }
                Ok(ObservationValue::Quantity { value, unit: k.unit.clone() })
            }
        }
    }
}

fn strip_suffix_ignore_case<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    if suffix.is_empty() || s.len() < suffix.len() || !s.is_char_boundary(s.len() - suffix.len()) {
        return None;
    }
    let (head, tail) = s.split_at(s.len() - suffix.len());
    (tail.to_lowercase() == suffix.to_lowercase()).then_some(head)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = r#"
code_system = "2.25.1"
[[keyword]]
term = "NRS"
headings = ["Smärta (NRS)", "NRS smärta"]
type = "quantity"
unit = "{score}"
min = 0
max = 10
[[keyword]]
term = "SIDA"
headings = ["Sida"]
type = "code"
values = { "Höger" = "HOGER", "Vänster" = "VANSTER" }
[[keyword]]
term = "VIKT"
headings = ["Vikt"]
type = "quantity"
unit = "kg"
"#;

    #[test]
    fn spellings_case_and_spaces_are_one_keyword() {
        let t = KeywordTable::parse(TABLE).unwrap();
        let e = t.extract("Bedömning\n  nrs   SMÄRTA :  6\nSIDA:höger\nVikt: 72,5 kg\nFritext: något");
        assert_eq!(e.refused, vec![]);
        assert_eq!(e.values.len(), 3);
        assert_eq!(e.values[0].value, ObservationValue::Quantity { value: 6.0, unit: Some("{score}".into()) });
        assert_eq!(e.values[1].value, ObservationValue::Code { code: Code::new("2.25.1", "HOGER") });
        assert_eq!(e.values[2].value, ObservationValue::Quantity { value: 72.5, unit: Some("kg".into()) });
        assert_eq!(e.other_lines, 2);
    }

    #[test]
    fn bad_keywords_are_refused_alone() {
        let t = KeywordTable::parse(TABLE).unwrap();
        let e = t.extract("Smärta (NRS): mycket\nSida: Höger\nSida: Vänster\nVikt: 80");
        assert_eq!(e.values.len(), 1, "{e:?}");
        assert_eq!(e.refused.len(), 2);
        assert!(e.refused[0].reason.contains("not a number"));
        assert!(e.refused[1].reason.contains("2 different values"));
        let e = t.extract("Sida: Höger\nSida: höger\nSmärta (NRS): 11");
        assert_eq!(e.values.len(), 1, "the same answer twice is one answer");
        assert!(e.refused[0].reason.contains("outside the allowed range"));
        let e = t.extract("Sida: Kanske");
        assert!(e.refused[0].reason.contains("not one of the allowed answers"), "{e:?}");
        assert!(!e.refused[0].reason.contains("Kanske"), "the answer written is personal data");
    }

    #[test]
    fn a_heading_in_two_keywords_is_an_error() {
        let bad = TABLE.replace("headings = [\"Vikt\"]", "headings = [\"sida\"]");
        let e = KeywordTable::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("already a heading"), "{e}");
    }
}

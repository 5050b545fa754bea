//! Stratum register metadata: register, forms, questions, domains, units — as served by the
//! metadata endpoints and as stored in `conformance/stratum/*.json`. The client validates every
//! outgoing value against these; the emulator serves them; the SAR mapper reads form specs.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterInfo {
    #[serde(rename = "RegisterID")]
    pub register_id: u32,
    pub register_name: String,
    #[serde(default)]
    pub short_name: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DomainRef {
    #[serde(rename = "DomainID")]
    pub domain_id: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Question {
    #[serde(rename = "QuestionID")]
    pub question_id: u32,
    pub column_name: String,
    #[serde(default)]
    pub prefix_text: Option<String>,
    #[serde(default)]
    pub is_mandatory: bool,
    /// `SubjectKey`, `EventDate`, `UnitCode` or null.
    #[serde(default)]
    pub mapped_to: Option<String>,
    pub domain: DomainRef,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Form {
    #[serde(rename = "FormID")]
    pub form_id: u32,
    pub form_name: String,
    #[serde(default)]
    pub form_title: Option<String>,
    /// `first_visit`, `three_months`, `one_year`, `aggregate` (our contract's hint).
    #[serde(default)]
    pub occasion: Option<String>,
    #[serde(default)]
    pub questions: Vec<Question>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct DomainValue {
    /// Integer or string code, as the register defines it.
    pub value_code: serde_json::Value,
    pub value_name: String,
    #[serde(default)]
    pub sequence: Option<i64>,
    #[serde(default = "yes")]
    pub is_active: bool,
}

fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Domain {
    #[serde(rename = "DomainID")]
    pub domain_id: u32,
    pub domain_name: String,
    /// `boolean`, `string`, `date`, `integer`, `decimal`.
    pub data_type: String,
    #[serde(default)]
    pub is_enumerated: bool,
    #[serde(default)]
    pub domain_values: Vec<DomainValue>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct Unit {
    #[serde(rename = "UnitID")]
    pub unit_id: u32,
    pub unit_code: String,
    pub unit_name: String,
    #[serde(rename = "HSAID", default)]
    pub hsa_id: Option<String>,
}

/// One register's whole metadata.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterMetadata {
    pub register: RegisterInfo,
    pub forms: Vec<Form>,
    pub domains: Vec<Domain>,
    #[serde(default)]
    pub units: Vec<Unit>,
}

impl RegisterMetadata {
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<RegisterMetadata> {
        Ok(serde_json::from_slice(bytes)?)
    }
    pub fn form(&self, name: &str) -> Option<&Form> {
        self.forms.iter().find(|f| f.form_name == name)
    }
    pub fn domain(&self, id: u32) -> Option<&Domain> {
        self.domains.iter().find(|d| d.domain_id == id)
    }
    /// The column carrying the personnummer (`MappedTo = SubjectKey`) of a form.
    pub fn subject_column<'a>(&self, form: &'a Form) -> Option<&'a str> {
        form.questions.iter().find(|q| q.mapped_to.as_deref() == Some("SubjectKey")).map(|q| q.column_name.as_str())
    }
    pub fn event_date_column<'a>(&self, form: &'a Form) -> Option<&'a str> {
        form.questions.iter().find(|q| q.mapped_to.as_deref() == Some("EventDate")).map(|q| q.column_name.as_str())
    }
    pub fn form_by_id(&self, id: u32) -> Option<&Form> {
        self.forms.iter().find(|f| f.form_id == id)
    }
    pub fn unit_by_code(&self, code: &str) -> Option<&Unit> {
        self.units.iter().find(|u| u.unit_code == code)
    }
}

impl Form {
    pub fn question(&self, column: &str) -> Option<&Question> {
        self.questions.iter().find(|q| q.column_name == column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn conformance_files_parse() {
        for f in ["conformance/stratum/sar-104.json", "conformance/stratum/pvk-aggregate.json"] {
            let m = RegisterMetadata::from_json(&std::fs::read(f).unwrap()).unwrap();
            assert!(!m.forms.is_empty());
            for form in &m.forms {
                for q in &form.questions {
                    assert!(m.domain(q.domain.domain_id).is_some(), "{f}: {} has unknown domain", q.column_name);
                }
            }
        }
        let sar = RegisterMetadata::from_json(&std::fs::read("conformance/stratum/sar-104.json").unwrap()).unwrap();
        let fv = sar.form("FVPat").unwrap();
        assert_eq!(sar.subject_column(fv), Some("SubjectKey"));
        assert_eq!(sar.event_date_column(fv), Some("EventDate"));
    }
}

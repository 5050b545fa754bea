//! HSA ids: `SE` + 10-digit organisation number + `-` + one or more of `A–Z a–z 0–9`, at most
//! 31 characters (research/sources.md §4). Test environments use a `TSE` prefix, which we accept.
//!
//! The organisation number also appears in its 12-digit form, `16` + the 10 digits (the form
//! Skatteverket's registers use for legal persons), giving ids such as `SE165565594230-1000`:
//! Inera's national HSA id in the RIV-TA service descriptions (PingForConfiguration 1.0's
//! example request, "Ineras nationella HSA-id SE165565594230-1000" as logical address) and unit
//! ids like `SE162321000451-0001` in the example of the clinicalprocess:activity:request TKB;
//! real HSA directories hold both forms. Both are accepted and the id is kept exactly as
//! written (a journal that says `SE16…` is answered with `SE16…`).

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HsaId(String);

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid HSA id: {0}")]
pub struct HsaError(pub &'static str);

impl HsaId {
    pub fn parse(s: &str) -> Result<HsaId, HsaError> {
        let s = s.trim();
        if s.len() > 31 {
            return Err(HsaError("longer than 31 characters"));
        }
        let rest = s
            .strip_prefix("TSE")
            .or_else(|| s.strip_prefix("SE"))
            .ok_or(HsaError("must start with SE (or TSE in test)"))?;
        let (org, local) = rest.split_once('-').ok_or(HsaError("missing '-' after the organisation number"))?;
        if !org.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HsaError("organisation number must be digits"));
        }
        // 10 digits, or the 12-digit form of an organisation number (`16` + the 10 digits).
        match org.len() {
            10 => {}
            12 if org.starts_with("16") => {}
            12 => return Err(HsaError("a 12-digit organisation number must start with 16")),
            _ => return Err(HsaError("organisation number must be 10 digits (or 12 starting with 16)")),
        }
        if local.is_empty() || !local.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(HsaError("local part must be one or more of A-Z a-z 0-9"));
        }
        Ok(HsaId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for HsaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HsaId({})", self.0)
    }
}
impl TryFrom<String> for HsaId {
    type Error = HsaError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        HsaId::parse(&s)
    }
}
impl From<HsaId> for String {
    fn from(h: HsaId) -> String {
        h.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn formats() {
        assert!(HsaId::parse("SE2321000073-1234").is_ok());
        assert!(HsaId::parse("TSE2321000214-13F8").is_ok());
        assert!(HsaId::parse("SE2321000073").is_err());
        assert!(HsaId::parse("SE232100007-1").is_err());
        assert!(HsaId::parse("SE2321000073-Å1").is_err());
        assert!(HsaId::parse("SE2321000073-a@b").is_err());
        assert!(HsaId::parse("SE2321000073-ABCDEFGHIJKLMNOPQRST").is_err()); // 32 chars
        assert!(HsaId::parse("XX2321000073-1").is_err());
    }

    #[test]
    fn twelve_digit_organisation_number_form() {
        // Inera's national HSA id as RIV-TA service descriptions write it, and a unit id.
        for id in ["SE165565594230-1000", "SE162321000451-0001", "TSE162321000214-13F8", "SE162321000073-ABCDEFGHIJKLMNOP"] {
            let h = HsaId::parse(id).unwrap_or_else(|e| panic!("{id}: {e}"));
            assert_eq!(h.as_str(), id, "kept as written");
        }
        assert_eq!(HsaId::parse("SE5565594230-1000").unwrap().as_str(), "SE5565594230-1000");
        assert!(HsaId::parse("SE172321000073-1").is_err(), "12 digits must start with 16");
        assert!(HsaId::parse("SE1623210000731-1").is_err(), "13 digits");
        assert!(HsaId::parse("SE16232100007-1").is_err(), "11 digits");
        assert!(HsaId::parse("SE162321000073-ABCDEFGHIJKLMNOPQ").is_err(), "32 characters");
        assert!(HsaId::parse("SE162321000073-").is_err());
    }
}

//! HSA ids: `SE` + 10-digit organisation number + `-` + one or more of `A–Z a–z 0–9`, at most
//! 31 characters (research/sources.md §4). Test environments use a `TSE` prefix, which we accept.

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
        if org.len() != 10 || !org.bytes().all(|b| b.is_ascii_digit()) {
            return Err(HsaError("organisation number must be 10 digits"));
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
}

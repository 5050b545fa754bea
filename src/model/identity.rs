//! Patient identities: personnummer, samordningsnummer and regional reserve numbers.
//!
//! Rules (see `research/sources.md` §4): 10 or 12 digits, optional `-`/`+` separator, Luhn check
//! over YYMMDDNNN, serial `000` invalid, samordningsnummer has day + 60, a 10-digit number takes
//! the latest century that does not put the birth date in the future, `+` subtracts 100 years.
//!
//! A `PatientId` never prints its value: `Debug` is redacted so an id cannot leak into a log line
//! by accident. The value is reachable only through [`PatientId::national_12`] / [`PatientId::raw`].

use chrono::{Datelike, NaiveDate};
use serde::{Deserialize, Serialize};
use std::fmt;

/// OID of personnummer (Skatteverket), as used in RIV-TA `patientId/type` and NKRR.
pub const OID_PERSONNUMMER: &str = "1.2.752.129.2.1.3.1";
/// OID of samordningsnummer.
pub const OID_SAMORDNINGSNUMMER: &str = "1.2.752.129.2.1.3.3";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdKind {
    Personnummer,
    Samordningsnummer,
    /// A regional reserve number (own OID, local format). Kept and flagged; never sent to a
    /// register that takes only national identities.
    Reserve,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PatientId {
    kind: IdKind,
    /// Normalised value: 12 digits for national ids, the trimmed raw value for reserve numbers.
    /// Boxed (no spare capacity): a run holds one per patient of the region.
    value: Box<str>,
    /// The OID the source gave (kept for reserve numbers, whose OID names the issuing region).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    oid: Option<Box<str>>,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("empty identity")]
    Empty,
    #[error("wrong length or characters (expected 10 or 12 digits, optionally with '-' or '+')")]
    Format,
    #[error("not a valid date of birth")]
    Date,
    #[error("serial number 000 is not issued")]
    Serial,
    #[error("check digit does not match (Luhn)")]
    CheckDigit,
    #[error("century 18, 19 or 20 required")]
    Century,
    #[error("a 12-digit identity must not carry a '+' separator")]
    PlusWithCentury,
    #[error("birth date lies in the future")]
    Future,
    #[error("unknown identity type (OID)")]
    UnknownType,
    #[error("reserve number has an unexpected format")]
    ReserveFormat,
}

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PatientId({:?}, <redacted>)", self.kind)
    }
}

/// Luhn (modulus 10) over the given digits, weights 2,1,2,1… from the first digit.
pub fn luhn_check_digit(digits: &[u8]) -> u8 {
    let mut sum = 0u32;
    for (i, d) in digits.iter().enumerate() {
        let mut v = (*d as u32) * if i % 2 == 0 { 2 } else { 1 };
        if v > 9 {
            v -= 9;
        }
        sum += v;
    }
    ((10 - (sum % 10)) % 10) as u8
}

/// [`PatientId::pack`]'s flag for a samordningsnummer, above any twelve-digit number.
const PACKED_SAMORDNINGSNUMMER: u64 = 1 << 62;

impl PatientId {
    pub fn kind(&self) -> IdKind {
        self.kind
    }

    pub fn is_national(&self) -> bool {
        matches!(self.kind, IdKind::Personnummer | IdKind::Samordningsnummer)
    }

    /// The 12-digit form `YYYYMMDDNNNC` for a register's SubjectKey. `None` for reserve numbers.
    pub fn national_12(&self) -> Option<&str> {
        self.is_national().then_some(&*self.value)
    }

    /// The normalised value whatever the kind (for the patient-key hash and for the source side).
    pub fn raw(&self) -> &str {
        &self.value
    }

    /// The OID to put in `patientId/type` (or the reserve OID the source gave).
    pub fn oid(&self) -> &str {
        match self.kind {
            IdKind::Personnummer => OID_PERSONNUMMER,
            IdKind::Samordningsnummer => OID_SAMORDNINGSNUMMER,
            IdKind::Reserve => self.oid.as_deref().unwrap_or(""),
        }
    }

    /// Date of birth (for national ids; reserve numbers in the `yyyymmdd…` form also carry it).
    pub fn birth_date(&self) -> Option<NaiveDate> {
        let v = &self.value;
        if v.len() < 8 || !v[..8].bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let y: i32 = v[0..4].parse().ok()?;
        let m: u32 = v[4..6].parse().ok()?;
        let mut d: u32 = v[6..8].parse().ok()?;
        if self.kind == IdKind::Samordningsnummer {
            d -= 60;
        }
        NaiveDate::from_ymd_opt(y, m, d)
    }

    /// Sex from the second-to-last digit (odd = man), national ids only.
    pub fn is_female(&self) -> Option<bool> {
        if !self.is_national() {
            return None;
        }
        let d = self.value.as_bytes()[10] - b'0';
        Some(d % 2 == 0)
    }

    /// Parse a national identity (personnummer or samordningsnummer) in any accepted written form,
    /// relative to `today` (used for the century rule of 10-digit forms).
    pub fn parse_national(input: &str, today: NaiveDate) -> Result<PatientId, IdError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(IdError::Empty);
        }
        let (digits, sep) = split_separator(s)?;
        let (century, rest): (Option<u32>, &str) = match digits.len() {
            12 => (Some(digits[0..2].parse().map_err(|_| IdError::Format)?), &digits[2..]),
            10 => (None, digits.as_str()),
            _ => return Err(IdError::Format),
        };
        let d: Vec<u8> = rest.bytes().map(|b| b - b'0').collect();
        let yy = (d[0] * 10 + d[1]) as u32;
        let mm = (d[2] * 10 + d[3]) as u32;
        let dd = (d[4] * 10 + d[5]) as u32;
        let serial = (d[6] as u32) * 100 + (d[7] as u32) * 10 + d[8] as u32;
        if serial == 0 {
            return Err(IdError::Serial);
        }
        if luhn_check_digit(&d[..9]) != d[9] {
            return Err(IdError::CheckDigit);
        }
        let (kind, day) = if dd > 60 {
            (IdKind::Samordningsnummer, dd - 60)
        } else {
            (IdKind::Personnummer, dd)
        };
        let full_year = match century {
            Some(c) => {
                if sep == Some('+') {
                    return Err(IdError::PlusWithCentury);
                }
                if !(18..=20).contains(&c) {
                    return Err(IdError::Century);
                }
                c * 100 + yy
            }
            None => {
                // Latest century that does not put the birth date in the future; '+' = 100+ years.
                let base = today.year() as u32;
                let mut year = base - (base % 100) + yy;
                let candidate = NaiveDate::from_ymd_opt(year as i32, mm, day.max(1));
                if year > base || candidate.map(|c| c > today).unwrap_or(false) {
                    year -= 100;
                }
                if sep == Some('+') {
                    year -= 100;
                }
                year
            }
        };
        let date = NaiveDate::from_ymd_opt(full_year as i32, mm, day).ok_or(IdError::Date)?;
        if date > today {
            return Err(IdError::Future);
        }
        let value = format!("{full_year:04}{mm:02}{dd:02}{}", &rest[6..10]);
        Ok(PatientId { kind, value: value.into(), oid: None })
    }

    /// Parse an id as given by a source together with its type OID. Personnummer and
    /// samordningsnummer OIDs are validated as national ids (and must agree with the day rule);
    /// an OID listed in `reserve_oids` is kept as a reserve number.
    pub fn parse_with_oid(
        input: &str,
        oid: &str,
        reserve_oids: &[String],
        today: NaiveDate,
    ) -> Result<PatientId, IdError> {
        match oid.trim() {
            OID_PERSONNUMMER | OID_SAMORDNINGSNUMMER | "" => {
                let id = PatientId::parse_national(input, today)?;
                Ok(id)
            }
            other if reserve_oids.iter().any(|r| r == other) => {
                PatientId::parse_reserve(input, other)
            }
            _ => Err(IdError::UnknownType),
        }
    }

    /// A regional reserve number. Its format is local; we accept 6–20 characters of digits and
    /// ASCII letters (e.g. Värmland `yyyymmddSNNC`) and keep it flagged as reserve.
    pub fn parse_reserve(input: &str, oid: &str) -> Result<PatientId, IdError> {
        let v = input.trim();
        if v.is_empty() {
            return Err(IdError::Empty);
        }
        if !(6..=20).contains(&v.len()) || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(IdError::ReserveFormat);
        }
        Ok(PatientId { kind: IdKind::Reserve, value: v.to_ascii_uppercase().into(), oid: Some(oid.into()) })
    }

    /// A national identity in eight bytes: its twelve digits as a number, with a flag for a
    /// samordningsnummer. `None` for a reserve number (text, with its OID). For lists that hold
    /// every inhabitant of a region ([`PatientId::unpack`] gives the identity back).
    pub fn pack(&self) -> Option<u64> {
        if !self.is_national() || self.oid.is_some() {
            return None;
        }
        let n: u64 = self.value.parse().ok()?;
        Some(n | if self.kind == IdKind::Samordningsnummer { PACKED_SAMORDNINGSNUMMER } else { 0 })
    }

    /// The identity a [`PatientId::pack`] gave. Only for values `pack` returned: any other
    /// number is not an identity.
    pub fn unpack(packed: u64) -> PatientId {
        let kind = if packed & PACKED_SAMORDNINGSNUMMER != 0 { IdKind::Samordningsnummer } else { IdKind::Personnummer };
        PatientId { kind, value: format!("{:012}", packed & !PACKED_SAMORDNINGSNUMMER).into(), oid: None }
    }

    /// Age in whole years at `on` (None if the birth date is unknown).
    pub fn age_at(&self, on: NaiveDate) -> Option<u32> {
        let b = self.birth_date()?;
        let mut age = on.year() - b.year();
        if (on.month(), on.day()) < (b.month(), b.day()) {
            age -= 1;
        }
        (age >= 0).then_some(age as u32)
    }
}

fn split_separator(s: &str) -> Result<(String, Option<char>), IdError> {
    let mut digits = String::with_capacity(12);
    let mut sep = None;
    for (i, c) in s.chars().enumerate() {
        match c {
            '0'..='9' => digits.push(c),
            '-' | '+' if sep.is_none() => {
                // The separator sits before the last four digits.
                let after = s.len() - i - 1;
                if after != 4 {
                    return Err(IdError::Format);
                }
                sep = Some(c);
            }
            _ => return Err(IdError::Format),
        }
    }
    Ok((digits, sep))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()
    }

    #[test]
    fn luhn_of_known_number() {
        // 811218-9876 is the classic example from the Skatteverket leaflet.
        assert_eq!(luhn_check_digit(&[8, 1, 1, 2, 1, 8, 9, 8, 7]), 6);
    }

    /// A national identity with its Luhn check digit (`ymd` eight digits, `serial` three).
    fn national(ymd: &str, serial: &str) -> PatientId {
        let nine: Vec<u8> = format!("{}{serial}", &ymd[2..]).bytes().map(|b| b - b'0').collect();
        PatientId::parse_national(&format!("{ymd}{serial}{}", luhn_check_digit(&nine)), today()).unwrap()
    }

    #[test]
    fn packed_national_identities_come_back_equal_and_reserve_numbers_are_not_packed() {
        let samordning = national("19701063", "239");
        assert_eq!(samordning.kind(), IdKind::Samordningsnummer);
        for id in [national("19121212", "121"), national("20010101", "111"), samordning] {
            let packed = id.pack().expect("a national identity packs");
            assert_eq!(PatientId::unpack(packed), id);
            assert_eq!(PatientId::unpack(packed).kind(), id.kind());
        }
        assert!(PatientId::parse_reserve("19500101R123", "1.2.752.97.3.1.3").unwrap().pack().is_none());
    }

    #[test]
    fn debug_never_shows_the_value() {
        let id = PatientId::parse_national("191212121212", today()).unwrap();
        let dbg = format!("{id:?}");
        assert!(!dbg.contains("1212"), "{dbg}");
    }
}

//! Headers: identity, sex, age, listing, drawn per patient from the seed.

use super::*;

// ---------------------------------------------------------------------------------------------
// Headers: identity, sex, age, listing.

/// (female, age, kind, listed) of the archetypes.
pub(super) fn archetype_header(i: usize) -> (bool, u32, IdKind, bool) {
    use archetype::*;
    match i {
        ARTROS_KNEE_COMPLETE => (true, 67, IdKind::Personnummer, true),
        ARTROS_HIP_AWAITING_Y1 => (false, 71, IdKind::Personnummer, true),
        ARTROS_DROPOUT_AFTER_SCHOOL => (true, 58, IdKind::Personnummer, true),
        ARTROS_M3PAT_INCOMPLETE => (true, 74, IdKind::Personnummer, true),
        ARTROS_OBJECTION => (true, 63, IdKind::Personnummer, true),
        ARTROS_SAMORDNINGSNUMMER => (true, 61, IdKind::Samordningsnummer, false),
        ARTROS_RESERVE_NUMBER => (false, 69, IdKind::Reserve, false),
        ARTROS_M3_NULLIFIED => (false, 66, IdKind::Personnummer, true),
        KOL => (false, 72, IdKind::Personnummer, true),
        STROKE => (true, 78, IdKind::Personnummer, true),
        TIA => (false, 69, IdKind::Personnummer, true),
        HEART_FAILURE => (false, 81, IdKind::Personnummer, true),
        OSTEOPOROSIS => (true, 76, IdKind::Personnummer, true),
        INCONTINENCE => (true, 45, IdKind::Personnummer, true),
        DEPRESSION => (true, 38, IdKind::Personnummer, true),
        STRESS => (true, 42, IdKind::Personnummer, true),
        FREQUENT_ATTENDER => (true, 55, IdKind::Personnummer, true),
        MUSCULOSKELETAL => (false, 47, IdKind::Personnummer, true),
        ARTROS_FVPT_INCOMPLETE => (true, 64, IdKind::Personnummer, true),
        ARTROS_Y1_INCOMPLETE => (false, 59, IdKind::Personnummer, true),
        ARTROS_RECENT => (true, 70, IdKind::Personnummer, true),
        UNLISTED => (false, 33, IdKind::Personnummer, false),
        _ => sar_cases::header(i),
    }
}

pub(super) fn draw_header(spec: &PopulationSpec, i: u32, n_rehab: u8, seen: &mut HashSet<[u8; 12]>) -> Header {
    let mut r = Rng::new(mix(spec.seed ^ HEADER_STREAM, i as u64));
    let today = spec.today;
    let (female, age, kind, listed) = if spec.archetypes && (i as usize) < archetype::COUNT {
        archetype_header(i as usize)
    } else {
        let female = r.chance(0.62);
        // Physiotherapy patients: women over 50 are the largest group.
        let band = r.weighted(&[12.0, 18.0, 30.0, 30.0, 10.0]);
        let (lo, hi) = [(18, 34), (35, 49), (50, 64), (65, 79), (80, 95)][band];
        let age = r.range(lo, hi) as u32;
        let kind = match r.weighted(&[994.0, 4.0, 2.0]) {
            0 => IdKind::Personnummer,
            1 => IdKind::Samordningsnummer,
            _ => IdKind::Reserve,
        };
        // Only folkbokförda (personnummer) can be listed.
        let listed = kind == IdKind::Personnummer && r.chance(0.93);
        (female, age, kind, listed)
    };
    let n_vc = (spec.rehab_units.len() + spec.vc_units.len()) as u64 - n_rehab as u64;
    let home = r.below(n_rehab as u64) as u8;
    let listed_unit = n_rehab + r.below(n_vc) as u8;
    let mut attempt = 0u64;
    loop {
        let mut ir = Rng::new(mix(spec.seed ^ HEADER_STREAM ^ 0x1d, ((i as u64) << 16) | attempt));
        let birth = {
            let base = NaiveDate::from_ymd_opt(today.year() - age as i32, today.month(), today.day().min(28)).expect("valid date");
            base - TimeDelta::days(ir.range(1, 364))
        };
        let id = make_id(&mut ir, birth, female, kind);
        if seen.insert(id) {
            let listed = listed.then(|| {
                let adult = NaiveDate::from_ymd_opt(birth.year() + 18, birth.month(), birth.day().min(28)).expect("valid date");
                let since = (today - TimeDelta::days(ir.range(30, 3650))).max(adult);
                (listed_unit, since)
            });
            return Header { id, kind, female, birth, listed, home, first: 0, last: 0, domain_units: [0; 4] };
        }
        attempt += 1;
    }
}

pub(super) fn make_id(r: &mut Rng, birth: NaiveDate, female: bool, kind: IdKind) -> [u8; 12] {
    let yyyy = birth.year() as u32;
    let mm = birth.month();
    let dd = birth.day() + if kind == IdKind::Samordningsnummer { 60 } else { 0 };
    let mut s = format!("{yyyy:04}{mm:02}{dd:02}");
    match kind {
        IdKind::Reserve => {
            // Värmland's reserve format yyyymmddSNNC (research/sources.md §1.8).
            let nn = r.range(10, 99);
            s.push('S');
            s.push_str(&format!("{nn:02}"));
            let digits: Vec<u8> = format!("{:02}{mm:02}{:02}{nn:02}", yyyy % 100, birth.day()).bytes().map(|b| b - b'0').collect();
            s.push((b'0' + luhn_check_digit(&digits)) as char);
        }
        _ => {
            // Serial NNN: the last of the three is even for women.
            let a = r.range(0, 99) as u32;
            let mut b = r.range(0, 4) as u32 * 2;
            if !female {
                b += 1;
            }
            if a == 0 && b == 0 {
                b = 2;
            }
            s.push_str(&format!("{a:02}{b}"));
            let digits: Vec<u8> = s[2..].bytes().map(|c| c - b'0').collect();
            s.push((b'0' + luhn_check_digit(&digits)) as char);
        }
    }
    s.as_bytes().try_into().expect("12 characters")
}

//! The SAR course scenarios of the sandbox population (issue 14): fixed archetypes that put the
//! treatment-course rules of `registers::sar` to the test end to end. Each writes a journal as a
//! clinic would; the truth (`truth.rs`) derives what the register should hold from it on its own.
//!
//! - [`archetype::SAR_TWO_JOINTS`]: knee (main) and hip (secondary) diagnosed at one first
//!   visit — one course, one FVPat and one FVPT naming both joints.
//! - [`archetype::SAR_SECONDARY_ONLY`]: knee artros only as a secondary diagnosis on a
//!   low-back-pain visit — no course.
//! - [`archetype::SAR_M19_OTHER_SITE`]: M19 with a site other than hand/wrist — no course (the
//!   mapper reports the diagnosis).
//! - [`archetype::SAR_QUESTIONNAIRE_BEFORE`]: the patient's first-visit answers documented at a
//!   phone contact three days before the first visit — they count for the first visit.
//! - [`archetype::SAR_UNRELATED_PAIN_IN_M3`]: a pain score for another complaint inside the
//!   3-month window, before the follow-up visit — not the 3-month occasion.
//! - [`archetype::SAR_SECOND_COURSE`]: a complete course, then a second course at the same unit
//!   about two years later — two first-visit registrations, neither overwrites the other.

use super::*;

/// (female, age, kind, listed) of the SAR course archetypes.
pub(super) fn header(i: usize) -> (bool, u32, IdKind, bool) {
    use archetype::*;
    match i {
        SAR_TWO_JOINTS => (true, 68, IdKind::Personnummer, true),
        SAR_SECONDARY_ONLY => (false, 57, IdKind::Personnummer, true),
        SAR_M19_OTHER_SITE => (true, 62, IdKind::Personnummer, true),
        SAR_QUESTIONNAIRE_BEFORE => (false, 73, IdKind::Personnummer, true),
        SAR_UNRELATED_PAIN_IN_M3 => (true, 66, IdKind::Personnummer, true),
        SAR_SECOND_COURSE => (false, 64, IdKind::Personnummer, true),
        _ => unreachable!("archetype index"),
    }
}

fn artros(b: &mut Builder, r: &mut Rng, h: &Header, c: ArtrosCourse) -> usize {
    b.plan.conditions.push(Condition::Artros);
    course_artros(b, r, h, c);
    b.plan.episodes.len() - 1
}

pub(super) fn build(i: usize, b: &mut Builder, r: &mut Rng, h: &Header) {
    use archetype::*;
    match i {
        SAR_TWO_JOINTS => {
            let ep = artros(b, r, h, ArtrosCourse::fixed(Joint::Knee, 200));
            let fvc = b.plan.episodes[ep].fv_contact;
            b.dx(fvc, "M16.1", false, false);
        }
        SAR_SECONDARY_ONLY => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            if let Some(c) = b.contact(r, b.today - days(120), b.home, Prof::Physio, false, 45, false) {
                b.dx(c, "M54.5", true, false);
                b.dx(c, "M17.1", false, true);
            }
            if let Some(c) = b.contact(r, b.today - days(105), b.home, Prof::Physio, false, 30, false) {
                b.dx(c, "M54.5", true, false);
            }
        }
        SAR_M19_OTHER_SITE => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            // G: lower leg/knee in the site order the shipped mapping cites (not hand/wrist).
            for k in 0..2 {
                if let Some(c) = b.contact(r, b.today - days(90 - 14 * k), b.home, Prof::Physio, false, 45, false) {
                    b.dx(c, "M19.0G", true, false);
                }
            }
        }
        SAR_QUESTIONNAIRE_BEFORE => {
            let ep = artros(b, r, h, ArtrosCourse::fixed(Joint::Hip, 170));
            let (fvc, unit) = (b.plan.episodes[ep].fv_contact, b.plan.episodes[ep].unit);
            let fv = b.plan.contacts[fvc as usize].start.date();
            // The questionnaire: a phone contact three days before (a weekend moves it to the
            // Monday, still before the visit), carrying the patient's own first-visit answers
            // (the most troublesome joint and side too, which FVPT reads as well).
            let Some(q) = b.contact(r, fv - days(3), unit, Prof::Physio, true, 15, false) else { return };
            debug_assert!(b.plan.contacts[q as usize].start.date() < fv);
            for o in b.plan.observations.iter_mut().filter(|o| o.contact == fvc && o.episode == Some(ep as u8) && o.forms & SarForm::FVPat.bit() != 0) {
                o.contact = q;
            }
        }
        SAR_UNRELATED_PAIN_IN_M3 => {
            let ep = artros(b, r, h, ArtrosCourse::fixed(Joint::Knee, 300));
            let (fvc, unit) = (b.plan.episodes[ep].fv_contact, b.plan.episodes[ep].unit);
            let fv = b.plan.contacts[fvc as usize].start.date();
            // Shoulder pain at the same unit, three days into the 3-month window (the generator's
            // follow-up comes at 95 days or later).
            if let Some(c) = b.contact(r, fv + days(M3_WINDOW.0), unit, Prof::Physio, false, 30, false) {
                b.dx(c, "M75.1", true, false);
                b.obs(c, obs::PAIN_NRS, q(6), None, 0, false);
            }
        }
        SAR_SECOND_COURSE => {
            // The history reaches back far enough for a course two years ago (inside 900 days,
            // the longest backfill the tests run). The second first visit comes more than 365
            // days after the first course's 1-year visit (at most 402 days after its first).
            b.start = b.today - days(1000);
            artros(b, r, h, ArtrosCourse::fixed(Joint::Knee, 880));
            artros(b, r, h, ArtrosCourse::fixed(Joint::Knee, 100));
        }
        _ => unreachable!("archetype index"),
    }
}

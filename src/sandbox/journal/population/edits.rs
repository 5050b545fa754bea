//! Replaying a patient's mutation overlay on the derived plan, and the identity of a header.

use super::*;

/// Indices of items that are new or differ.
pub(super) fn changed<'a, T: PartialEq>(before: &'a [T], after: &'a [T]) -> impl Iterator<Item = usize> + 'a {
    (0..after.len()).filter(move |i| before.get(*i) != Some(&after[*i]))
}

pub(super) fn ts(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).expect("in range")
}

pub(crate) fn identity(h: &Header, today: NaiveDate) -> crate::model::PatientId {
    match h.kind {
        IdKind::Reserve => crate::model::PatientId::parse_reserve(h.id_str(), super::super::OID_RESERVE_VARMLAND),
        _ => crate::model::PatientId::parse_national(h.id_str(), today),
    }
    .expect("generated identities are valid")
}

/// Apply one edit to a plan.
pub(super) fn apply_edit(plan: &mut Plan, e: &Edit) {
    match e {
        Edit::SetAnswer { episode, form, term, value, at } => {
            let ep = *episode as u8;
            let existing = plan
                .observations
                .iter()
                .enumerate()
                .filter(|(_, o)| o.episode == Some(ep) && o.forms & form.bit() != 0 && o.term == term.as_str() && !o.nullified)
                .map(|(i, _)| i)
                .next_back();
            match existing {
                Some(i) => {
                    let o = &mut plan.observations[i];
                    o.value = value.clone();
                    o.registered = Some(*at);
                }
                None => {
                    // `set_answer` checked that the form is recorded.
                    let Some(contact) = plan.observations.iter().find(|o| o.episode == Some(ep) && o.forms & form.bit() != 0).map(|o| o.contact) else {
                        return;
                    };
                    // An answer both first-visit forms read is one observation for both.
                    let forms = match form {
                        SarForm::FVPat | SarForm::FVPT if SarForm::FVPat.has_term(term) && SarForm::FVPT.has_term(term) => {
                            SarForm::FVPat.bit() | SarForm::FVPT.bit()
                        }
                        _ => form.bit(),
                    };
                    plan.observations.push(Obs {
                        contact,
                        term: Cow::Owned(term.clone()),
                        value: value.clone(),
                        episode: Some(ep),
                        forms,
                        nullified: false,
                        defect: None,
                        registered: Some(*at),
                    });
                }
            }
        }
        Edit::Nullify { kind, seq, cascade } => {
            let s = *seq as usize;
            match kind {
                DocKind::Contact => {
                    plan.contacts[s].nullified = true;
                    if *cascade {
                        plan.diagnoses.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                        plan.activities.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                        plan.observations.iter_mut().filter(|d| d.contact == *seq).for_each(|d| d.nullified = true);
                    }
                }
                DocKind::Diagnosis => plan.diagnoses[s].nullified = true,
                DocKind::Activity => plan.activities[s].nullified = true,
                DocKind::Observation => plan.observations[s].nullified = true,
            }
        }
        Edit::AddObjection { contact } => {
            plan.observations.push(Obs {
                contact: *contact,
                term: Cow::Borrowed(obs::REGISTER_OBJECTION),
                value: AnswerValue::coded(answer::YES),
                episode: None,
                forms: 0,
                nullified: false,
                defect: None,
                registered: None,
            });
        }
        Edit::AddVisit { spec, unit, prof, at } => {
            let c = plan.contacts.len() as u32;
            let start = spec.date.and_time(NaiveTime::from_hms_opt(10, 0, 0).expect("valid"));
            plan.contacts.push(Contact {
                start,
                minutes: 30,
                unit: *unit,
                phone: spec.phone,
                prof: *prof,
                staff: 1,
                registered: (*at).max(start + TimeDelta::minutes(30)),
                nullified: false,
                defect: None,
            });
            for (k, code) in spec.diagnoses.iter().enumerate() {
                plan.diagnoses.push(Dx { contact: c, code: Cow::Owned(code.clone()), main: k == 0, chronic: false, nullified: false, defect: None });
            }
            for a in &spec.activities {
                plan.activities.push(Act { contact: c, code: Cow::Owned(a.code.clone()), system: Cow::Owned(a.system.clone()), nullified: false, defect: None });
            }
            for (term, value) in &spec.observations {
                plan.observations.push(Obs {
                    contact: c,
                    term: Cow::Owned(term.clone()),
                    value: value.clone(),
                    episode: None,
                    forms: 0,
                    nullified: false,
                    defect: None,
                    registered: None,
                });
            }
        }
    }
}

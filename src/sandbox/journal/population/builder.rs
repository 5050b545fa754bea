//! The builder: a patient's contacts and what is documented at them — the artros course
//! (first visit → artrosskola → supervised exercise → 3 months → 1 year), the PVK conditions,
//! and the deliberate defects.

use super::*;

// ---------------------------------------------------------------------------------------------
// The builder: contacts and what is documented at them.

pub(super) struct Builder {
    pub(super) today: NaiveDate,
    pub(super) start: NaiveDate,
    pub(super) home: u8,
    pub(super) vc: u8,
    /// Nullification draws come from their own stream, so the share does not move the rest.
    pub(super) nrng: Rng,
    pub(super) null_share: f64,
    pub(super) plan: Plan,
}

pub(super) fn workday(d: NaiveDate) -> NaiveDate {
    match d.weekday() {
        Weekday::Sat => d + TimeDelta::days(2),
        Weekday::Sun => d + TimeDelta::days(1),
        _ => d,
    }
}

pub(super) fn days(n: i64) -> TimeDelta {
    TimeDelta::days(n)
}

/// The shipped SAR occasion windows, days after the first visit, inclusive
/// (connectors/artrosregistret/connector.toml): the generator's follow-up visits stay inside.
pub(crate) const M3_WINDOW: (i64, i64) = (91, 152);
pub(crate) const Y1_WINDOW: (i64, i64) = (365, 540);

/// The weekday `offset` days after `fv`, kept inside `window`: a weekend day moves to Monday,
/// or back to Friday where Monday would be past the window's end (a visit there would be no
/// follow-up for the register).
pub(super) fn follow_up_day(fv: NaiveDate, offset: i64, window: (i64, i64)) -> NaiveDate {
    let d = workday(fv + days(offset));
    if (d - fv).num_days() <= window.1 {
        return d;
    }
    let mut d = fv + days(offset);
    while matches!(d.weekday(), Weekday::Sat | Weekday::Sun) {
        d -= days(1);
    }
    d
}

impl Builder {
    pub(super) fn random_day(&self, r: &mut Rng) -> NaiveDate {
        self.start + days(r.range(0, (self.today - self.start).num_days()))
    }

    /// A contact on `date` (moved to a weekday); `None` outside the history window.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn contact(&mut self, r: &mut Rng, date: NaiveDate, unit: u8, prof: Prof, phone: bool, minutes: u16, nullable: bool) -> Option<u32> {
        let date = workday(date);
        if date < self.start || date > self.today {
            return None;
        }
        let minutes = if phone { 15 } else { minutes };
        let start = date.and_time(NaiveTime::from_hms_opt(8, 0, 0).expect("valid")) + TimeDelta::minutes(15 * r.range(0, 32));
        let registered = start + TimeDelta::minutes(minutes as i64 + r.range(5, 120));
        let nullified = nullable && self.nrng.chance(self.null_share);
        self.plan.contacts.push(Contact { start, minutes, unit, phone, prof, staff: r.range(1, 6) as u8, registered, nullified, defect: None });
        Some(self.plan.contacts.len() as u32 - 1)
    }

    /// A visit that counts (not nullified) or `None`.
    pub(super) fn visit(&mut self, r: &mut Rng, date: NaiveDate, unit: u8, prof: Prof, phone: bool, minutes: u16) -> Option<u32> {
        let c = self.contact(r, date, unit, prof, phone, minutes, true)?;
        (!self.plan.contacts[c as usize].nullified).then_some(c)
    }

    pub(super) fn nullified(&self, c: u32) -> bool {
        self.plan.contacts[c as usize].nullified
    }

    pub(super) fn dx(&mut self, c: u32, code: &'static str, main: bool, chronic: bool) {
        let nullified = self.nullified(c);
        self.plan.diagnoses.push(Dx { contact: c, code: Cow::Borrowed(code), main, chronic, nullified, defect: None });
    }

    pub(super) fn act(&mut self, c: u32, code: &'static str, system: &'static str) {
        let nullified = self.nullified(c);
        self.plan.activities.push(Act { contact: c, code: Cow::Borrowed(code), system: Cow::Borrowed(system), nullified, defect: None });
    }

    pub(super) fn obs(&mut self, c: u32, term: &'static str, value: AnswerValue, episode: Option<u8>, forms: u8, nullified: bool) {
        let nullified = nullified || self.nullified(c);
        self.plan.observations.push(Obs { contact: c, term: Cow::Borrowed(term), value, episode, forms, nullified, defect: None, registered: None });
    }

    /// A visit with every document at it made nullified afterwards.
    pub(super) fn nullify_contact(&mut self, c: u32) {
        apply_edit(&mut self.plan, &Edit::Nullify { kind: DocKind::Contact, seq: c, cascade: true });
    }

    /// Write a form's answers at contact `c`. Optional answers are sometimes left out; `drop`
    /// leaves out one (mandatory) answer on purpose. Now and then an answer is first entered
    /// wrong, nullified, and entered again.
    pub(super) fn form(&mut self, r: &mut Rng, c: u32, ep: u8, forms: u8, answers: Vec<(&'static str, AnswerValue)>, drop: Option<&'static str>) {
        for (term, value) in answers {
            let mandatory = SarForm::ALL.iter().any(|f| forms & f.bit() != 0 && f.mandatory().any(|t| t == term));
            if Some(term) == drop || (!mandatory && r.chance(0.12)) {
                continue;
            }
            if self.nrng.chance(self.null_share * 2.0) {
                self.obs(c, term, wrong(&value), Some(ep), forms, true);
            }
            self.obs(c, term, value, Some(ep), forms, false);
        }
    }

    /// A series of sessions (`n` at most, `every` days apart) with an activity and maybe a
    /// diagnosis; returns how many took place (not nullified).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn series(
        &mut self,
        r: &mut Rng,
        first: NaiveDate,
        n: (i64, i64),
        every: i64,
        unit: u8,
        prof: Prof,
        activity: Option<&'static str>,
        dx: Option<&'static str>,
    ) -> u32 {
        let mut held = 0;
        for k in 0..r.range(n.0, n.1) {
            if !r.chance(0.85) {
                continue;
            }
            if let Some(c) = self.contact(r, first + days(k * every), unit, prof, false, 45, true) {
                if let Some(a) = activity {
                    self.act(c, a, LOCAL_TERMS);
                }
                if let Some(d) = dx {
                    if r.chance(0.6) {
                        self.dx(c, d, true, false);
                    }
                }
                if !self.nullified(c) {
                    held += 1;
                }
            }
        }
        held
    }

    /// Sort contacts by time and renumber every reference, so sequence numbers follow time.
    pub(super) fn finish(&mut self) {
        let p = &mut self.plan;
        let mut idx: Vec<u32> = (0..p.contacts.len() as u32).collect();
        idx.sort_by_key(|i| (p.contacts[*i as usize].start, *i));
        let mut new_of = vec![0u32; idx.len()];
        for (new, old) in idx.iter().enumerate() {
            new_of[*old as usize] = new as u32;
        }
        let old = std::mem::take(&mut p.contacts);
        p.contacts = idx.iter().map(|i| old[*i as usize].clone()).collect();
        for d in &mut p.diagnoses {
            d.contact = new_of[d.contact as usize];
        }
        for a in &mut p.activities {
            a.contact = new_of[a.contact as usize];
        }
        for o in &mut p.observations {
            o.contact = new_of[o.contact as usize];
        }
        for e in &mut p.episodes {
            e.fv_contact = new_of[e.fv_contact as usize];
        }
        p.diagnoses.sort_by_key(|d| d.contact);
        p.activities.sort_by_key(|d| d.contact);
        p.observations.sort_by_key(|d| d.contact);
    }
}

/// A plausible wrong first entry for an answer that is then corrected.
pub(super) fn wrong(v: &AnswerValue) -> AnswerValue {
    match v {
        AnswerValue::Quantity(q) => AnswerValue::Quantity(q + 1.0),
        AnswerValue::Code(c) => AnswerValue::coded(match c.as_ref() {
            answer::YES => answer::NO,
            answer::NO => answer::YES,
            "1" => "2",
            "2" => "3",
            "3" => "4",
            "4" => "5",
            "5" => "4",
            answer::LEFT => answer::RIGHT,
            answer::RIGHT => answer::LEFT,
            answer::BOTH => answer::LEFT,
            answer::HIP => answer::KNEE,
            _ => answer::HIP,
        }),
    }
}

pub(super) fn yes_no(b: bool) -> AnswerValue {
    AnswerValue::coded(if b { answer::YES } else { answer::NO })
}

pub(super) fn level(n: i64) -> AnswerValue {
    AnswerValue::coded(answer::LEVELS[(n.clamp(1, 5) - 1) as usize])
}

pub(super) fn q(v: i64) -> AnswerValue {
    AnswerValue::Quantity(v as f64)
}

// ---------------------------------------------------------------------------------------------
// Artros: first visit → artrosskola → supervised exercise → 3 months → 1 year.

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    AfterSchool,
    AfterExercise,
    AfterM3,
    Never,
}

pub(super) struct ArtrosCourse {
    pub(super) joint: Option<Joint>,
    /// First visit this many days before today (else anywhere in the window).
    pub(super) fv_days_ago: Option<i64>,
    pub(super) stop: Option<Stop>,
    /// Leave out this mandatory answer of this form.
    pub(super) drop: Option<(SarForm, &'static str)>,
    pub(super) objection_at_m3: bool,
    pub(super) nullify_m3: bool,
    /// Every form recorded and complete, nothing left to chance (archetypes).
    pub(super) clean: bool,
}

impl ArtrosCourse {
    pub(super) fn random() -> ArtrosCourse {
        ArtrosCourse { joint: None, fv_days_ago: None, stop: None, drop: None, objection_at_m3: false, nullify_m3: false, clean: false }
    }
    pub(super) fn fixed(joint: Joint, fv_days_ago: i64) -> ArtrosCourse {
        ArtrosCourse { joint: Some(joint), fv_days_ago: Some(fv_days_ago), stop: Some(Stop::Never), drop: None, objection_at_m3: false, nullify_m3: false, clean: true }
    }
}

/// The patient's answers at one occasion, before anything is left out.
pub(super) struct Proms {
    pub(super) nrs: i64,
    pub(super) eq: [i64; 5],
    pub(super) vas: i64,
    pub(super) ases: (i64, i64),
    pub(super) wants_surgery: bool,
    pub(super) fear: bool,
    pub(super) activity_min: i64,
    pub(super) exercise_min: i64,
    pub(super) medication: bool,
    pub(super) sick_leave: bool,
}

impl Proms {
    pub(super) fn baseline(r: &mut Rng, joint: Joint, age: u32) -> Proms {
        Proms {
            nrs: r.range(3, 8),
            eq: [r.range(1, 4), r.range(1, 2), r.range(1, 4), r.range(2, 4), r.range(1, 3)],
            vas: r.range(8, 17) * 5,
            ases: (r.range(3, 8) * 10, r.range(3, 8) * 10),
            wants_surgery: r.chance(match joint {
                Joint::Hip => 0.25,
                Joint::Knee => 0.2,
                Joint::Hand => 0.05,
            }),
            fear: r.chance(0.35),
            activity_min: r.range(3, 30) * 10,
            exercise_min: r.range(0, 12) * 10,
            medication: r.chance(0.55),
            sick_leave: age < 65 && r.chance(0.12),
        }
    }

    /// After treatment: mostly better, sometimes not.
    pub(super) fn follow_up(&self, r: &mut Rng) -> Proms {
        Proms {
            nrs: (self.nrs - r.range(-1, 4)).clamp(0, 10),
            eq: self.eq.map(|l| (l - r.range(-1, 1).max(0)).clamp(1, 5)),
            vas: (self.vas + r.range(-2, 5) * 5).clamp(0, 100),
            ases: ((self.ases.0 / 10 + r.range(-1, 2)).clamp(1, 10) * 10, (self.ases.1 / 10 + r.range(-1, 2)).clamp(1, 10) * 10),
            wants_surgery: self.wants_surgery && r.chance(0.7),
            fear: self.fear && r.chance(0.5),
            activity_min: (self.activity_min + r.range(-3, 12) * 10).clamp(0, 10080),
            exercise_min: (self.exercise_min + r.range(-2, 9) * 10).clamp(0, 10080),
            medication: self.medication && r.chance(0.7),
            sick_leave: self.sick_leave && r.chance(0.4),
        }
    }

    pub(super) fn answers(&self) -> Vec<(&'static str, AnswerValue)> {
        vec![
            (obs::PAIN_NRS, q(self.nrs)),
            (obs::PAIN_FREQUENCY, level((self.nrs / 2).max(1))),
            (obs::EQ5D_MOBILITY, level(self.eq[0])),
            (obs::EQ5D_SELFCARE, level(self.eq[1])),
            (obs::EQ5D_ACTIVITIES, level(self.eq[2])),
            (obs::EQ5D_PAIN, level(self.eq[3])),
            (obs::EQ5D_ANXIETY, level(self.eq[4])),
            (obs::EQ_VAS, q(self.vas)),
            (obs::ASES_PAIN, q(self.ases.0)),
            (obs::ASES_OTHER, q(self.ases.1)),
            (obs::WANTS_SURGERY, yes_no(self.wants_surgery)),
            (obs::FEAR_OF_MOVEMENT, yes_no(self.fear)),
            (obs::ACTIVITY_MINUTES, q(self.activity_min)),
            (obs::EXERCISE_MINUTES, q(self.exercise_min)),
            (obs::OA_MEDICATION, yes_no(self.medication)),
            (obs::SICK_LEAVE, yes_no(self.sick_leave)),
        ]
    }
}

/// One mandatory answer a hurried physiotherapist may leave out of a form.
pub(super) fn droppable(form: SarForm, r: &mut Rng) -> &'static str {
    match form {
        SarForm::FVPT => obs::SIDE,
        SarForm::M3PT => r.pick(&[obs::EDUCATION_SESSIONS, obs::SUPERVISED_EXERCISE_SESSIONS]),
        _ => r.pick(&[obs::PAIN_NRS, obs::EQ_VAS, obs::EQ5D_MOBILITY, obs::EQ5D_ANXIETY, obs::WANTS_SURGERY]),
    }
}

pub(super) fn course_artros(b: &mut Builder, r: &mut Rng, h: &Header, p: ArtrosCourse) {
    let age = h.age_on(b.today);
    let joint = p.joint.unwrap_or_else(|| [Joint::Knee, Joint::Hip, Joint::Hand][r.weighted(&[55.0, 35.0, 10.0])]);
    let side = [Side::Right, Side::Left, Side::Both][r.weighted(&[40.0, 35.0, 25.0])];
    let icd = match (joint, side) {
        (Joint::Hip, Side::Both) => "M16.0",
        (Joint::Hip, _) => r.pick(&["M16.1", "M16.1", "M16.1", "M16.9"]),
        (Joint::Knee, Side::Both) => "M17.0",
        (Joint::Knee, _) => r.pick(&["M17.1", "M17.1", "M17.1", "M17.9"]),
        (Joint::Hand, Side::Both) => "M18.0",
        (Joint::Hand, _) => r.pick(&["M18.1", "M18.9"]),
    };
    let unit = b.home;
    let fv = match p.fv_days_ago {
        Some(d) => b.today - days(d),
        None => b.random_day(r),
    };
    let stop = p.stop.unwrap_or_else(|| [Stop::AfterSchool, Stop::AfterExercise, Stop::AfterM3, Stop::Never][r.weighted(&[10.0, 7.0, 15.0, 68.0])]);
    let drop_for = |form: SarForm, r: &mut Rng| -> Option<&'static str> {
        match p.drop {
            Some((f, t)) if f == form => Some(t),
            _ if p.clean => None,
            _ => r.chance(0.05).then(|| droppable(form, r)),
        }
    };

    // Often a physician saw the joint first (then the patient did not come directly).
    let prior = r.chance(0.45);
    if prior {
        let before = days(r.range(7, 60));
        if let Some(c) = b.visit(r, fv - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, icd, true, false);
        }
    }
    let Some(fvc) = b.contact(r, fv, unit, Prof::Physio, false, 60, false) else { return };
    let fv = b.plan.contacts[fvc as usize].start.date();
    b.dx(fvc, icd, true, false);
    let ep = b.plan.episodes.len() as u8;
    b.plan.episodes.push(Episode { joint, side, icd, unit, fv_contact: fvc });
    let mut contacts = vec![fvc];

    // First visit: the joint and side (both first-visit forms read them), the patient's
    // answers, the physiotherapist's assessment.
    let both_fv = SarForm::FVPat.bit() | SarForm::FVPT.bit();
    let fvpat_drop = drop_for(SarForm::FVPat, r);
    let fvpt_drop = drop_for(SarForm::FVPT, r);
    let shared = vec![(obs::MAIN_JOINT, AnswerValue::coded(joint.code())), (obs::SIDE, AnswerValue::coded(side.code()))];
    b.form(r, fvc, ep, both_fv, shared, fvpat_drop.filter(|t| *t == obs::MAIN_JOINT).or(fvpt_drop));
    let base = Proms::baseline(r, joint, age);
    let mut fvpat = base.answers();
    let (height, weight) = if h.female { (r.range(152, 178), r.range(52, 105)) } else { (r.range(166, 194), r.range(64, 125)) };
    fvpat.extend([
        (obs::WALKING_DIFFICULTY_OTHER, yes_no(r.chance(0.15))),
        (obs::HEIGHT, q(height)),
        (obs::WEIGHT, q(weight)),
        (obs::ON_WAITING_LIST, yes_no(base.wants_surgery && r.chance(0.2))),
        (obs::NO_PRIOR_MEDICAL_HELP, yes_no(!prior && r.chance(0.6))),
    ]);
    b.form(r, fvc, ep, SarForm::FVPat.bit(), fvpat, fvpat_drop);
    let fvpt = vec![
        (obs::XRAY_DONE, yes_no(r.chance(0.5))),
        (obs::CHAIR_STAND_30S, q(r.range(6, 16))),
        (obs::WALK_40M, AnswerValue::Quantity(r.range(200, 450) as f64 / 10.0)),
    ];
    b.form(r, fvc, ep, SarForm::FVPT.bit(), fvpt, fvpt_drop);

    // Artrosskola: three theory sessions a week apart.
    let school = fv + days(r.range(7, 21));
    let m3_day = follow_up_day(fv, if p.clean || r.chance(0.8) { r.range(95, 125) } else { r.range(M3_WINDOW.0, M3_WINDOW.1) }, M3_WINDOW);
    let mut school_held = 0;
    for k in 0..3 {
        if !p.clean && !r.chance(0.9) {
            continue;
        }
        if let Some(c) = b.contact(r, school + days(7 * k), unit, Prof::Physio, false, 90, !p.clean) {
            b.act(c, act::ARTROSSKOLA, LOCAL_TERMS);
            if r.chance(0.5) {
                b.dx(c, icd, true, false);
            }
            if !b.nullified(c) {
                school_held += 1;
                contacts.push(c);
            }
        }
    }
    if stop == Stop::AfterSchool {
        finish_artros(b, r, &contacts, &p, None);
        return;
    }

    // Supervised exercise: twice a week for six weeks, before the 3-month visit.
    let mut exercise_held = 0;
    if p.clean || !r.chance(0.12) {
        let ex = school + days(14 + r.range(3, 10));
        for k in 0..12 {
            let d = workday(ex + days(7 * (k / 2) + 3 * (k % 2)));
            if d >= m3_day || (!p.clean && !r.chance(0.8)) {
                continue;
            }
            if let Some(c) = b.contact(r, d, unit, Prof::Physio, false, 60, !p.clean) {
                b.act(c, act::SUPERVISED_EXERCISE, LOCAL_TERMS);
                if r.chance(0.3) {
                    b.dx(c, icd, true, false);
                }
                if !b.nullified(c) {
                    exercise_held += 1;
                    contacts.push(c);
                }
            }
        }
    }
    if stop == Stop::AfterExercise {
        finish_artros(b, r, &contacts, &p, None);
        return;
    }

    // Three months: the patient's follow-up and the physiotherapist's count of sessions.
    let Some(m3c) = b.contact(r, m3_day, unit, Prof::Physio, false, 45, false) else {
        finish_artros(b, r, &contacts, &p, None);
        return;
    };
    contacts.push(m3c);
    b.dx(m3c, icd, true, false);
    b.obs(m3c, obs::FOLLOW_UP_MARK, AnswerValue::coded(answer::YES), None, 0, false);
    let m3 = base.follow_up(r);
    let mut m3pat = m3.answers();
    m3pat.extend([(obs::SATISFACTION, level(r.range(3, 5))), (obs::USES_KNOWLEDGE, level(r.range(1, 4)))]);
    let drop = drop_for(SarForm::M3Pat, r);
    b.form(r, m3c, ep, SarForm::M3Pat.bit(), m3pat, drop);
    if p.clean || r.chance(0.95) {
        let m3pt = vec![
            (obs::EDUCATION_SESSIONS, q(school_held)),
            (obs::SUPERVISED_EXERCISE_SESSIONS, q(exercise_held)),
            (obs::EXERCISE_ADHERENCE, level(if exercise_held >= 9 { 1 } else if exercise_held >= 5 { 2 } else { 3 })),
        ];
        let drop = drop_for(SarForm::M3PT, r);
        b.form(r, m3c, ep, SarForm::M3PT.bit(), m3pt, drop);
    }
    if p.nullify_m3 {
        b.nullify_contact(m3c);
    }
    if stop == Stop::AfterM3 {
        finish_artros(b, r, &contacts, &p, Some(m3c));
        return;
    }

    // One year: the patient answers once more, often by phone.
    let y1_day = follow_up_day(fv, if p.clean || r.chance(0.8) { r.range(370, 400) } else { r.range(Y1_WINDOW.0, Y1_WINDOW.1) }, Y1_WINDOW);
    let phone = r.chance(0.4);
    if let Some(y1c) = b.contact(r, y1_day, unit, Prof::Physio, phone, 30, false) {
        contacts.push(y1c);
        b.obs(y1c, obs::FOLLOW_UP_MARK, AnswerValue::coded(answer::YES), None, 0, false);
        let y1 = base.follow_up(r);
        let mut y1pat = y1.answers();
        y1pat.extend([(obs::SATISFACTION, level(r.range(2, 5))), (obs::USES_KNOWLEDGE, level(r.range(1, 5)))]);
        let drop = drop_for(SarForm::Y1Pat, r);
        b.form(r, y1c, ep, SarForm::Y1Pat.bit(), y1pat, drop);
    }
    finish_artros(b, r, &contacts, &p, Some(m3c));
}

/// A register objection: where the course asks for one, or now and then at random.
pub(super) fn finish_artros(b: &mut Builder, r: &mut Rng, contacts: &[u32], p: &ArtrosCourse, m3: Option<u32>) {
    let at = if p.objection_at_m3 {
        m3
    } else if !p.clean && r.chance(0.03) {
        Some(r.pick(contacts))
    } else {
        None
    };
    if let Some(c) = at {
        b.obs(c, obs::REGISTER_OBJECTION, AnswerValue::coded(answer::YES), None, 0, false);
    }
}

// ---------------------------------------------------------------------------------------------
// PVK conditions.

pub(super) fn vc_visits(b: &mut Builder, r: &mut Rng, n: (i64, i64), prof: Prof, code: &'static str, chronic: bool) {
    for _ in 0..r.range(n.0, n.1) {
        let d = b.random_day(r);
        let phone = r.chance(0.2);
        if let Some(c) = b.contact(r, d, b.vc, prof, phone, 20, true) {
            b.dx(c, code, true, chronic);
        }
    }
}

pub(super) fn course_musculoskeletal(b: &mut Builder, r: &mut Rng, code: Option<&'static str>) {
    let code = code.unwrap_or_else(|| r.pick(&["M54.5", "M54.5", "M54.2", "M75.1", "M75.4", "M25.5", "M77.1", "M79.1", "S93.4", "M54.4", "M53.1", "M65.4"]));
    let prof = if matches!(code, "M65.4" | "M77.1") && r.chance(0.5) { Prof::OccTherapist } else { Prof::Physio };
    let d0 = b.random_day(r);
    if r.chance(0.2) {
        let before = days(r.range(3, 30));
        if let Some(c) = b.visit(r, d0 - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, code, true, false);
        }
    }
    let Some(c) = b.contact(r, d0, b.home, prof, false, 45, true) else { return };
    b.dx(c, code, true, false);
    let mut d = d0;
    for _ in 0..r.range(1, 7) {
        d += days(r.range(5, 21));
        let phone = r.chance(0.25);
        if let Some(c) = b.contact(r, d, b.home, prof, phone, 30, true) {
            if r.chance(0.65) {
                b.dx(c, code, true, false);
            }
            if !phone && r.chance(0.3) {
                b.act(c, act::SUPERVISED_EXERCISE, LOCAL_TERMS);
            }
        }
    }
}

pub(super) fn course_kol(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = if r.chance(0.85) { "J44.9" } else { "J44.1" };
    vc_visits(b, r, (1, 3), Prof::Physician, code, true);
    vc_visits(b, r, (1, 2), Prof::Nurse, code, true);
    if !(full || r.chance(0.55)) {
        return;
    }
    let unit = if r.chance(0.3) { b.vc } else { b.home };
    let d0 = b.random_day(r);
    if let Some(c) = b.visit(r, d0, unit, Prof::Physio, false, 60) {
        b.act(c, act::SIX_MINUTE_WALK_TEST, LOCAL_TERMS);
        b.obs(c, obs::SIX_MINUTE_WALK, q(r.range(50, 110) * 5), None, 0, false);
        b.dx(c, "J44.9", true, true);
    }
    let prof = if r.chance(0.5) { Prof::Nurse } else { Prof::Physio };
    b.series(r, d0 + days(7), (1, 2), 7, unit, prof, Some(act::PATIENT_EDUCATION_KOL), Some("J44.9"));
    if full || r.chance(0.35) {
        b.series(r, d0 + days(10), (1, 1), 7, unit, Prof::OccTherapist, Some(act::ENERGY_CONSERVATION), Some("J44.9"));
    }
    if full || r.chance(0.45) {
        let held = b.series(r, d0 + days(21), (8, 16), 3, unit, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some("J44.9"));
        if held > 4 && (full || r.chance(0.5)) {
            if let Some(c) = b.visit(r, d0 + days(80), unit, Prof::Physio, false, 60) {
                b.act(c, act::SIX_MINUTE_WALK_TEST, LOCAL_TERMS);
                b.obs(c, obs::SIX_MINUTE_WALK, q(r.range(60, 120) * 5), None, 0, false);
            }
        }
    }
}

pub(super) fn course_stroke(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["I63.9", "I61.9", "I64.9"][r.weighted(&[70.0, 15.0, 15.0])];
    vc_visits(b, r, (1, 2), Prof::Physician, code, true);
    vc_visits(b, r, (1, 2), Prof::Nurse, code, true);
    if full || r.chance(0.7) {
        let d0 = b.random_day(r);
        let a = if r.chance(0.5) { act::BALANCE_TRAINING } else { act::SUPERVISED_EXERCISE };
        b.series(r, d0, (3, 10), 7, b.home, Prof::Physio, Some(a), Some(code));
        b.series(r, d0 + days(3), (1, 4), 10, b.home, Prof::OccTherapist, None, Some(code));
    }
}

pub(super) fn course_tia(b: &mut Builder, r: &mut Rng) {
    vc_visits(b, r, (1, 2), Prof::Physician, "G45.9", false);
    vc_visits(b, r, (0, 1), Prof::Nurse, "G45.9", false);
    if r.chance(0.15) {
        let d0 = b.random_day(r);
        b.series(r, d0, (2, 4), 7, b.home, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some("G45.9"));
    }
}

pub(super) fn course_heart_failure(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["I50.9", "I50.0", "I50.1"][r.weighted(&[70.0, 20.0, 10.0])];
    vc_visits(b, r, (1, 3), Prof::Physician, code, true);
    vc_visits(b, r, (2, 4), Prof::Nurse, code, true);
    if full || r.chance(0.3) {
        let d0 = b.random_day(r);
        b.series(r, d0, (6, 12), 4, b.home, Prof::Physio, Some(act::SUPERVISED_EXERCISE), Some(code));
    }
}

pub(super) fn course_osteoporosis(b: &mut Builder, r: &mut Rng, full: bool) {
    let with_fracture = full || r.chance(0.4);
    let code = if with_fracture { "M80.9" } else { "M81.9" };
    let fracture = if full { "S72.0" } else { r.pick(&["S72.0", "S52.5", "S32.0", "S22.0"]) };
    let d0 = b.random_day(r);
    if with_fracture || r.chance(0.3) {
        let before = days(r.range(10, 40));
        if let Some(c) = b.visit(r, d0 - before, b.vc, Prof::Physician, false, 20) {
            b.dx(c, fracture, true, false);
        }
    }
    if let Some(c) = b.visit(r, d0, b.vc, Prof::Physician, false, 30) {
        b.dx(c, code, true, true);
        if with_fracture {
            b.dx(c, fracture, false, false);
        }
    }
    vc_visits(b, r, (0, 1), Prof::Nurse, code, true);
    if full || r.chance(0.55) {
        let unit = if r.chance(0.25) { b.vc } else { b.home };
        let start = d0 + days(r.range(7, 30));
        let kinds = [act::BALANCE_TRAINING, act::FALL_PREVENTION, act::SUPERVISED_EXERCISE];
        let first = if full { act::BALANCE_TRAINING } else { r.pick(&kinds) };
        b.series(r, start, (3, 8), 7, unit, Prof::Physio, Some(first), Some(code));
        if full || r.chance(0.4) {
            b.series(r, start + days(3), (1, 3), 7, unit, Prof::Physio, Some(act::FALL_PREVENTION), Some(code));
        }
    }
}

pub(super) fn course_incontinence(b: &mut Builder, r: &mut Rng, female: bool, full: bool) {
    let code = if female { ["N39.3", "N39.4", "R32"][r.weighted(&[50.0, 30.0, 20.0])] } else { r.pick(&["N39.4", "R32"]) };
    let prof = if r.chance(0.5) { Prof::Nurse } else { Prof::Physician };
    vc_visits(b, r, (1, 2), prof, code, false);
    if full || r.chance(0.6) {
        let unit = if r.chance(0.3) { b.vc } else { b.home };
        let d0 = b.random_day(r);
        b.series(r, d0, (2, 5), 14, unit, Prof::Physio, Some(act::PELVIC_FLOOR_TRAINING), Some(code));
    }
}

pub(super) fn course_depression(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = ["F32.1", "F32.0", "F32.9", "F33.1"][r.weighted(&[35.0, 25.0, 25.0, 15.0])];
    vc_visits(b, r, (1, 3), Prof::Physician, code, false);
    vc_visits(b, r, (2, 6), Prof::Psychologist, code, false);
    if full || r.chance(0.3) {
        let d0 = b.random_day(r);
        b.series(r, d0, (3, 8), 7, b.home, Prof::Physio, Some(act::BODY_AWARENESS), Some(code));
    }
}

pub(super) fn course_stress(b: &mut Builder, r: &mut Rng, full: bool) {
    let code = if full { "F43.8A" } else { ["F43.8A", "F43.2", "F43.9"][r.weighted(&[40.0, 30.0, 30.0])] };
    vc_visits(b, r, (1, 3), Prof::Physician, code, false);
    vc_visits(b, r, (1, 4), Prof::Psychologist, code, false);
    if full || r.chance(0.4) {
        // Rehab sets a symptom diagnosis as often as the physician's.
        let rehab_code = if full || r.chance(0.5) { r.pick(&["Z73.0", "R53.9"]) } else { code };
        let prof = if r.chance(0.7) { Prof::Physio } else { Prof::OccTherapist };
        let d0 = b.random_day(r);
        b.series(r, d0, (3, 8), 7, b.home, prof, Some(act::BODY_AWARENESS), Some(rehab_code));
    }
}

pub(super) fn course_general_practice(b: &mut Builder, r: &mut Rng) {
    for _ in 0..r.range(1, 2) {
        let code = r.pick(&["J06.9", "R10.4", "I10.9", "E11.9", "Z00.0", "L30.9", "H10.9"]);
        let prof = if r.chance(0.6) { Prof::Physician } else { Prof::Nurse };
        vc_visits(b, r, (1, 1), prof, code, false);
    }
}

/// More than 20 visits within twelve months.
pub(super) fn course_frequent_attender(b: &mut Builder, r: &mut Rng) {
    let span = (b.today - b.start).num_days();
    let from = b.start + days(r.range(0, (span - 365).max(0)));
    let n = r.range(23, 34);
    for k in 0..n {
        let d = from + days(k * 340 / n + r.range(0, 4));
        let (unit, prof) = if r.chance(0.7) { (b.vc, if r.chance(0.6) { Prof::Physician } else { Prof::Nurse }) } else { (b.home, Prof::Physio) };
        // Not nullable: the count must stay above 20.
        let phone = r.chance(0.3);
        if let Some(c) = b.contact(r, d, unit, prof, phone, 20, false) {
            if r.chance(0.8) {
                b.dx(c, r.pick(&["M79.7", "R51.9", "R10.4", "M54.5", "F41.9", "R53.9"]), true, false);
            }
        }
    }
}

/// FaR (KVÅ DV200) at one of the patient's visits with a physician or physiotherapist.
pub(super) fn add_far(b: &mut Builder, r: &mut Rng) {
    let candidates: Vec<u32> = (0..b.plan.contacts.len() as u32)
        .filter(|c| {
            let k = &b.plan.contacts[*c as usize];
            !k.phone && !k.nullified && matches!(k.prof, Prof::Physician | Prof::Physio)
        })
        .collect();
    if candidates.is_empty() {
        return;
    }
    let c = r.pick(&candidates);
    b.act(c, kva::FAR, OID_KVA);
}

pub(super) fn add_objection_somewhere(b: &mut Builder, r: &mut Rng) {
    let n = b.plan.contacts.len() as u64;
    if n > 0 {
        let c = r.below(n) as u32;
        b.obs(c, obs::REGISTER_OBJECTION, AnswerValue::coded(answer::YES), None, 0, false);
    }
}

pub(super) fn run_condition(b: &mut Builder, r: &mut Rng, h: &Header, c: Condition, full: bool) {
    b.plan.conditions.push(c);
    match c {
        Condition::Artros => course_artros(b, r, h, ArtrosCourse::random()),
        Condition::Musculoskeletal => course_musculoskeletal(b, r, None),
        Condition::Kol => course_kol(b, r, full),
        Condition::Stroke => course_stroke(b, r, full),
        Condition::Tia => course_tia(b, r),
        Condition::HeartFailure => course_heart_failure(b, r, full),
        Condition::Osteoporosis => course_osteoporosis(b, r, full),
        Condition::Incontinence => course_incontinence(b, r, h.female, full),
        Condition::Depression => course_depression(b, r, full),
        Condition::Stress => course_stress(b, r, full),
        Condition::GeneralPractice => course_general_practice(b, r),
        Condition::FrequentAttender => course_frequent_attender(b, r),
    }
}

pub(super) fn build_random(b: &mut Builder, r: &mut Rng, h: &Header, age: u32) {
    let f = h.female;
    let a = age;
    let table: [(Condition, f64); 12] = [
        (Condition::Musculoskeletal, 45.0),
        (Condition::Artros, if a >= 50 { 30.0 } else if a >= 40 { 8.0 } else { 1.0 }),
        (Condition::Kol, if a >= 45 { 4.0 } else { 0.0 }),
        (Condition::Stroke, if a >= 45 { 2.5 } else { 0.0 }),
        (Condition::Tia, if a >= 45 { 1.0 } else { 0.0 }),
        (Condition::HeartFailure, if a >= 55 { 2.5 } else { 0.0 }),
        // Old enough on every day of the history (osteoporosis from 50, incontinence from 20).
        (Condition::Osteoporosis, if a >= 52 { if f { 6.0 } else { 2.0 } } else { 0.0 }),
        (Condition::Incontinence, if a >= 22 { if f { 5.0 } else { 1.0 } } else { 0.0 }),
        (Condition::Depression, 6.0),
        (Condition::Stress, if (20..65).contains(&a) { 6.0 } else { 0.0 }),
        (Condition::GeneralPractice, 8.0),
        (Condition::FrequentAttender, 0.6),
    ];
    let weights: Vec<f64> = table.iter().map(|t| t.1).collect();
    let first = table[r.weighted(&weights)].0;
    run_condition(b, r, h, first, false);
    if r.chance(0.15) {
        let second = table[r.weighted(&weights)].0;
        if second != first && second != Condition::FrequentAttender {
            run_condition(b, r, h, second, false);
        }
    }
    if first != Condition::GeneralPractice && r.chance(0.35) {
        course_general_practice(b, r);
    }
    if r.chance(0.08) {
        add_far(b, r);
    }
    if first != Condition::Artros && r.chance(0.01) {
        add_objection_somewhere(b, r);
    }
}

pub(super) fn build_archetype(i: usize, b: &mut Builder, r: &mut Rng, h: &Header) {
    use archetype::*;
    let artros = |b: &mut Builder, r: &mut Rng, c: ArtrosCourse| {
        b.plan.conditions.push(Condition::Artros);
        course_artros(b, r, h, c);
    };
    match i {
        ARTROS_KNEE_COMPLETE => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 420)),
        ARTROS_HIP_AWAITING_Y1 => artros(b, r, ArtrosCourse::fixed(Joint::Hip, 180)),
        ARTROS_DROPOUT_AFTER_SCHOOL => artros(b, r, ArtrosCourse { stop: Some(Stop::AfterSchool), ..ArtrosCourse::fixed(Joint::Knee, 300) }),
        ARTROS_M3PAT_INCOMPLETE => {
            artros(b, r, ArtrosCourse { stop: Some(Stop::AfterM3), drop: Some((SarForm::M3Pat, obs::EQ_VAS)), ..ArtrosCourse::fixed(Joint::Hip, 200) })
        }
        ARTROS_OBJECTION => artros(b, r, ArtrosCourse { objection_at_m3: true, ..ArtrosCourse::fixed(Joint::Knee, 400) }),
        ARTROS_SAMORDNINGSNUMMER => artros(b, r, ArtrosCourse::fixed(Joint::Hand, 160)),
        ARTROS_RESERVE_NUMBER => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 120)),
        ARTROS_M3_NULLIFIED => artros(b, r, ArtrosCourse { nullify_m3: true, stop: Some(Stop::AfterM3), ..ArtrosCourse::fixed(Joint::Hip, 250) }),
        KOL => {
            run_condition(b, r, h, Condition::Kol, true);
            add_far(b, r);
        }
        STROKE => run_condition(b, r, h, Condition::Stroke, true),
        TIA => run_condition(b, r, h, Condition::Tia, true),
        HEART_FAILURE => run_condition(b, r, h, Condition::HeartFailure, true),
        OSTEOPOROSIS => run_condition(b, r, h, Condition::Osteoporosis, true),
        INCONTINENCE => run_condition(b, r, h, Condition::Incontinence, true),
        DEPRESSION => {
            run_condition(b, r, h, Condition::Depression, true);
            add_far(b, r);
        }
        STRESS => run_condition(b, r, h, Condition::Stress, true),
        FREQUENT_ATTENDER => run_condition(b, r, h, Condition::FrequentAttender, true),
        MUSCULOSKELETAL => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            course_musculoskeletal(b, r, Some("M54.5"));
        }
        ARTROS_FVPT_INCOMPLETE => artros(b, r, ArtrosCourse { drop: Some((SarForm::FVPT, obs::SIDE)), ..ArtrosCourse::fixed(Joint::Knee, 230) }),
        ARTROS_Y1_INCOMPLETE => artros(b, r, ArtrosCourse { drop: Some((SarForm::Y1Pat, obs::WANTS_SURGERY)), ..ArtrosCourse::fixed(Joint::Knee, 450) }),
        ARTROS_RECENT => artros(b, r, ArtrosCourse::fixed(Joint::Knee, 10)),
        UNLISTED => {
            b.plan.conditions.push(Condition::Musculoskeletal);
            course_musculoskeletal(b, r, Some("M75.1"));
        }
        _ => sar_cases::build(i, b, r, h),
    }
}

/// Deliberately bad items: a header personnummer with a wrong check digit, or a code in a code
/// system nobody knows. Never on SAR answers, objections, follow-up marks or artros diagnoses,
/// whose loss would change the registers' expected outcome in ways the truth does not describe.
pub(super) fn apply_defects(plan: &mut Plan, r: &mut Rng, share: f64, kind: IdKind) {
    let national = kind != IdKind::Reserve;
    for c in &mut plan.contacts {
        if national && r.chance(share) {
            c.defect = Some(Defect::InvalidPersonnummer);
        }
    }
    for d in &mut plan.diagnoses {
        // Artros diagnoses (M15–M19) open and classify SAR courses: like SAR answers, never bad.
        if r.chance(share) && !matches!(d.code.get(..3), Some("M15" | "M16" | "M17" | "M18" | "M19")) {
            d.defect = Some(if national && r.chance(0.5) { Defect::InvalidPersonnummer } else { Defect::UnknownCodeSystem });
        }
    }
    for a in &mut plan.activities {
        if r.chance(share) {
            a.defect = Some(Defect::UnknownCodeSystem);
        }
    }
    for o in &mut plan.observations {
        if o.episode.is_none() && o.term != obs::REGISTER_OBJECTION && o.term != obs::FOLLOW_UP_MARK && r.chance(share) {
            o.defect = Some(Defect::UnknownCodeSystem);
        }
    }
}

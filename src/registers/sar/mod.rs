//! Svenska Artrosregistret (SAR). SAR has no code path of its own: its registrations come from
//! the generic register engine (`registers::engine`) driven by the connector folder
//! `connectors/artrosregistret` (`connector.toml` windows, `mapping.toml` `[course]` with the
//! joint classification, forms and columns). What stays here is what only SAR has:
//! - the SAR rules below, written down once (the engine applies them to any register;
//!   the joint classification and session counts are features SAR's mapping declares);
//! - `indicators.rs`: the register's own indicators per clinic and year of first visit,
//!   computed from the registrations the register holds;
//! - the names other code and the tests know SAR's engine by (`SarMapper`, `SarOutcome`…).
//!
//! # The SAR rules
//!
//! Written down here once; `mapping.toml` (`[course]`), `connector.toml` and the sandbox
//! generator's truth (`sandbox::journal::truth`, which computes the expected registrations
//! independently) refer to this list. The register registers one treatment course
//! (grundbehandling) per patient with the joint classification inside it, and reports by year
//! of first visit (`shared/research/sar-register-facts.md`).
//!
//! 1. **Journal.** Only the patient's own records count, never nullified ones (a nullified
//!    contact, diagnosis, activity or observation contributes nothing, and what it produced is
//!    retracted), never anything dated after today (planned visits are not occasions).
//! 2. **Course.** Patient × unit. It opens at a care contact at one of the connector's units
//!    that meets `[course] inclusion`: `main_diagnosis` (a configured joint's diagnosis is the
//!    contact's main diagnosis), `any_diagnosis` (main or secondary) or `term:<CODE>` (the
//!    region's inclusion term documented at the contact). A secondary-only diagnosis opens
//!    nothing unless configured. Its date is the first visit. No course, no registration.
//! 3. **Joint classification.** Every joint diagnosed (main or secondary) at the unit within the
//!    first-visit window is in the course, with one or both sides (a code listed `bilateral`);
//!    the course's joint is the opening main diagnosis's. Joints are ICD-10-SE code patterns in
//!    `[course.joints]` (M19 counts only with the hand/wrist site). An artros code
//!    (`report_unmatched`) that classifies no joint is reported as a note, never guessed.
//! 4. **Later courses.** An including contact more than `gap_days` (default 365) after the
//!    course's last occasion opens a new course at the unit; otherwise it belongs to the
//!    current one. A course's follow-up windows end before the next course's first-visit window.
//! 5. **Answers** belong to the care contact they name (its unit and day), else to their own
//!    unit and day. Days are calendar days in Europe/Stockholm. A term documented twice on one
//!    day: the later entry counts.
//! 6. **Occasions.** The first visit (FVPat, FVPT; EventDate = the first visit) takes answers
//!    from the first-visit window (default 14 days before to 14 after): the first-visit day
//!    first, else the nearest day, the earlier of two equally near. A follow-up (M3Pat + M3PT,
//!    Y1Pat) is the *first* day inside its window (days after the first visit, both ends
//!    inclusive; `connector.toml`, shipped 91–152 = "3–5 months" and 365–540 = "12 months or
//!    later") on which the follow-up mark (`[course] follow_up_mark`: a term or a contact type)
//!    is documented at the unit — or, without a mark, an answer of any of its forms. Answers are
//!    read from that day only; nothing is due before the window opens.
//! 7. **Due forms.** Once an occasion took place every form of it is due: sent when each
//!    mandatory column has a valid value, otherwise put on the worklist ("att komplettera")
//!    naming the missing columns, never sent half-filled. That includes a form nobody filled in
//!    at the occasion (the physiotherapist's M3PT when only the patient answered).
//! 8. **Session counts** (M3PT) are the physiotherapist's recorded counts at the 3-month visit
//!    (observations, shipped `mapping.toml`). A mapping may count activities instead
//!    (`count_activities`: at the unit, from the first visit through the occasion).
//! 9. **First visit before follow-ups.** A follow-up is sent only when both first-visit forms of
//!    its course are complete. Until then it waits on the worklist with the incomplete
//!    first-visit form(s) named in `missing`.
//! 10. **One registration per patient, course and form** (keys below); a later change of the
//!    journal updates it.
//! 11. **Opt-out.** A register objection (the `[opt_out]` term with one of its values) that no
//!    later entry withdraws means nothing is sent and everything sent is retracted.
//! 12. **Identity.** Patients with a reserve number only are not registered.
//!
//! Keys: a course is `register|unit|patient_key|course` for the patient's first course at the
//! unit and `register|unit|patient_key|course@YYYY-MM-DD` (its first-visit date) for a later
//! one; a registration's idempotency key is the course key plus `|form`. `patient_key` is the
//! patient pseudonym, never the personnummer. A corrected first-visit date of the first course
//! changes the payload (EventDate) of the same key; a later course never overwrites an earlier
//! one. Keys of the old scheme (`…|<joint>|form`, one episode per joint) were carried over by
//! the store migration `0005_sar_course_keys` (both backends): nothing is sent again.

pub mod indicators;

pub use crate::registers::engine::{
    check, check_connector, coverage, episode, forms, mapping, offline_metadata, CoverageRow, Mapping, Note as SarNote, NoteKind, Occasion, Outcome as SarOutcome,
    PatientInput, RegisterEngine as SarMapper, COURSE,
};

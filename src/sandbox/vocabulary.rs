//! The sandbox region's journal vocabulary: the codes its synthetic journal writes, which the
//! shipped connector mappings (connectors/*/mapping.toml, PVK sandbox rules) read.
//!
//! Real Cosmic keyword (sökord) ids are not public (research/sources.md §7.3), so the sandbox
//! uses its own local code system. A region replaces these in its connector files, not in code.

/// The sandbox's local keyword/term system (an OID under 2.25, the UUID arc, so it can never
/// clash with a real code system).
pub const LOCAL_TERMS: &str = "2.25.317202611230001";

/// Observation terms (GetObservations `observation/type`, code in LOCAL_TERMS).
pub mod obs {
    pub const PAIN_NRS: &str = "NRS-SMARTA";
    pub const PAIN_FREQUENCY: &str = "SMARTFREKVENS";
    pub const EQ5D_MOBILITY: &str = "EQ5D-RORLIGHET";
    pub const EQ5D_SELFCARE: &str = "EQ5D-HYGIEN";
    pub const EQ5D_ACTIVITIES: &str = "EQ5D-AKTIVITETER";
    pub const EQ5D_PAIN: &str = "EQ5D-SMARTA";
    pub const EQ5D_ANXIETY: &str = "EQ5D-ORO";
    pub const EQ_VAS: &str = "EQ-VAS";
    pub const ASES_PAIN: &str = "ASES-SMARTA";
    pub const ASES_OTHER: &str = "ASES-OVRIGA";
    pub const WANTS_SURGERY: &str = "VILL-OPERERAS";
    pub const FEAR_OF_MOVEMENT: &str = "RORELSERADSLA";
    pub const ACTIVITY_MINUTES: &str = "AKTIVITET-MIN-VECKA";
    pub const EXERCISE_MINUTES: &str = "TRANING-MIN-VECKA";
    pub const OA_MEDICATION: &str = "LAKEMEDEL-LEDBESVAR";
    pub const SICK_LEAVE: &str = "SJUKSKRIVEN-LEDBESVAR";
    pub const WALKING_DIFFICULTY_OTHER: &str = "GANGSVARIGHET-ANNAN";
    pub const HEIGHT: &str = "LANGD";
    pub const WEIGHT: &str = "VIKT";
    pub const ON_WAITING_LIST: &str = "VANTELISTA-OPERATION";
    pub const NO_PRIOR_MEDICAL_HELP: &str = "DIREKT-UTAN-LAKARE";
    pub const MAIN_JOINT: &str = "MEST-BESVARANDE-LED";
    pub const SIDE: &str = "SIDA";
    pub const XRAY_DONE: &str = "RONTGEN-GJORD";
    pub const CHAIR_STAND_30S: &str = "UPPRESNINGSTEST-30S";
    pub const WALK_40M: &str = "GANGTEST-40M";
    pub const SATISFACTION: &str = "NOJDHET-ARTROSSKOLA";
    pub const USES_KNOWLEDGE: &str = "ANVANDER-KUNSKAP";
    pub const EXERCISE_ADHERENCE: &str = "FOLJSAMHET-TRANING";
    /// The patient objects to reporting to quality registers (value: cv code "JA").
    pub const REGISTER_OBJECTION: &str = "KVALREG-SPARR";
    /// Marks a visit as the artros course's follow-up (3 months, 1 year): the shipped SAR
    /// mapping ties follow-up occasions to it (`follow_up_mark`), value cv "JA".
    pub const FOLLOW_UP_MARK: &str = "ARTROS-UPPFOLJNING";
    /// Six-minute walk test, metres (KOL).
    pub const SIX_MINUTE_WALK: &str = "6MWT";
    /// Artrosskola sessions attended, as the physiotherapist counts them at the 3-month visit.
    pub const EDUCATION_SESSIONS: &str = "ARTROSSKOLA-ANTAL";
    /// Supervised exercise sessions attended, counted at the 3-month visit.
    pub const SUPERVISED_EXERCISE_SESSIONS: &str = "HANDLEDD-TRANING-ANTAL";
}

/// Coded answer values (cv codes in LOCAL_TERMS).
pub mod answer {
    pub const YES: &str = "JA";
    pub const NO: &str = "NEJ";
    pub const HIP: &str = "HOFT";
    pub const KNEE: &str = "KNA";
    pub const HAND: &str = "HAND";
    pub const RIGHT: &str = "HOGER";
    pub const LEFT: &str = "VANSTER";
    pub const BOTH: &str = "BADA";
    /// Ordinal answers (EQ-5D levels, pain frequency, satisfaction, exercise adherence) are cv
    /// codes "1".."5" in LOCAL_TERMS; the observation term says which scale.
    pub const LEVELS: [&str; 5] = ["1", "2", "3", "4", "5"];
}

/// Activity codes in LOCAL_TERMS for actions with no confirmed KVÅ code (research/pvk.md §4).
pub mod act {
    pub const ARTROSSKOLA: &str = "ARTROSSKOLA";
    pub const SUPERVISED_EXERCISE: &str = "HANDLEDD-TRANING";
    pub const SIX_MINUTE_WALK_TEST: &str = "6MWT-GENOMFORT";
    pub const PATIENT_EDUCATION_KOL: &str = "PATIENTUTBILDNING-KOL";
    pub const BALANCE_TRAINING: &str = "BALANSTRANING";
    pub const FALL_PREVENTION: &str = "FALLPREVENTION";
    pub const PELVIC_FLOOR_TRAINING: &str = "BACKENBOTTENTRANING";
    pub const BODY_AWARENESS: &str = "KROPPSKANNEDOM";
    /// Energibesparande tekniker (occupational therapy, KOL).
    pub const ENERGY_CONSERVATION: &str = "ENERGIBESPARANDE-TEKNIK";
}

/// Units of quantity answers (observation `value/pq/unit`, UCUM).
pub mod unit {
    /// Scores on a scale (NRS, EQ VAS, ASES).
    pub const SCORE: &str = "{score}";
    pub const MINUTES_PER_WEEK: &str = "min/wk";
    pub const CENTIMETRE: &str = "cm";
    pub const KILOGRAM: &str = "kg";
    pub const METRE: &str = "m";
    pub const SECOND: &str = "s";
    /// Counts (chair stands, sessions).
    pub const COUNT: &str = "{count}";
}

/// Status of an activity or observation (`status`, cv in LOCAL_TERMS). GetActivities and
/// GetObservations have no `nullified` flag, so a nullified (makulerad) item says so here.
pub mod status {
    pub const COMPLETED: &str = "GENOMFORD";
    pub const NULLIFIED: &str = "MAKULERAD";
}

/// Relation codes (cv in LOCAL_TERMS) on activities and observations.
pub mod relation {
    /// The item was documented at the care contact named by `referredInformation/id/extension`
    /// (the contact's `careContactId`; `referredInformation/type` is `vko`).
    pub const CARE_CONTACT: &str = "VARDKONTAKT";
}

/// KVÅ codes the sandbox uses that a public source confirms.
pub mod kva {
    /// Utfärdande av FaR (Region Kalmar's guidance, research/pvk.md addendum).
    pub const FAR: &str = "DV200";
}

/// Profession (role) codes on care contacts and activities, in LOCAL_TERMS.
pub mod profession {
    pub const PHYSIOTHERAPIST: &str = "FYSIOTERAPEUT";
    pub const OCCUPATIONAL_THERAPIST: &str = "ARBETSTERAPEUT";
    pub const PHYSICIAN: &str = "LAKARE";
    pub const NURSE: &str = "SJUKSKOTERSKA";
    pub const PSYCHOLOGIST: &str = "PSYKOLOG";
}

/// Sandbox units: four physiotherapy/rehab units (the Stratum metadata's units) and two
/// vårdcentraler (listed population; PVK VC variants, delivered as files only).
pub const REHAB_UNITS: [&str; 4] = ["SE2321000156-FT01", "SE2321000156-FT02", "SE2321000156-FT03", "SE2321000156-FT04"];
pub const VC_UNITS: [&str; 2] = ["SE2321000156-VC01", "SE2321000156-VC02"];
/// The sandbox journal's source system HSA id and care giver.
pub const SOURCE_SYSTEM: &str = "SE2321000156-COS1";
pub const CARE_GIVER: &str = "SE2321000156-0001";

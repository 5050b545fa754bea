//! RIV-TA SOAP consumer (GetCareContacts 3, GetDiagnosis 2, GetActivities 1, GetObservations 1.1,
//! engagement index GetUpdates).

pub mod inspect;

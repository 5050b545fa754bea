//! The RIV-TA contracts the consumer speaks: namespaces, element names, SOAPAction and endpoint
//! path (research/sources.md §1.1–1.5; the XSDs under conformance/riv are the contract).

use serde::Serialize;

/// SOAP 1.1 envelope namespace (RIV-TA Basic Profile 2.1 is SOAP 1.1).
pub const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// Namespace of the `LogicalAddress` SOAP header.
pub const REGISTRY_NS: &str = "urn:riv:itintegration:registry:1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Contract {
    GetCareContacts,
    GetDiagnosis,
    GetActivities,
    GetObservations,
    GetUpdates,
    /// Journal notes; keyword (sökord) notes are read with the connector's keyword table.
    GetCareDocumentation,
}

impl Contract {
    pub const CLINICAL: [Contract; 4] = [Contract::GetCareContacts, Contract::GetDiagnosis, Contract::GetActivities, Contract::GetObservations];

    /// Namespace of the request/response elements and their direct children.
    pub fn responder_ns(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3",
            Contract::GetDiagnosis => "urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2",
            Contract::GetActivities => "urn:riv:clinicalprocess:activity:actions:GetActivitiesResponder:1",
            Contract::GetObservations => "urn:riv:clinicalprocess:healthcond:basic:GetObservationsResponder:1",
            Contract::GetUpdates => "urn:riv:itintegration:engagementindex:GetUpdatesResponder:1",
            Contract::GetCareDocumentation => "urn:riv:clinicalprocess:healthcond:description:GetCareDocumentationResponder:2",
        }
    }

    /// Namespace of the core-component types (everything below the responder's own elements).
    pub fn core_ns(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "urn:riv:clinicalprocess:logistics:logistics:3",
            Contract::GetDiagnosis => "urn:riv:clinicalprocess:healthcond:description:2",
            Contract::GetActivities => "urn:riv:clinicalprocess:activity:actions:1",
            Contract::GetObservations => "urn:riv:clinicalprocess:healthcond:basic:1",
            Contract::GetUpdates => "urn:riv:itintegration:engagementindex:1",
            Contract::GetCareDocumentation => "urn:riv:clinicalprocess:healthcond:description:2",
        }
    }

    /// Namespace of a `result` element declared outside the responder schema: GetCareDocumentation
    /// 2.1 puts `m1:result` (and its children) in the domain's 2.1 extension namespace.
    pub fn result_ns(self) -> Option<&'static str> {
        match self {
            Contract::GetCareDocumentation => Some("urn:riv:clinicalprocess:healthcond:description:2.1"),
            _ => None,
        }
    }

    /// Depth (0 = the response element) down to which elements are in the responder namespace.
    /// In GetUpdates `registeredResidentEngagement`'s children are declared in the responder
    /// schema too; everywhere else only the response element and its children are.
    pub(crate) fn responder_depth(self) -> usize {
        match self {
            Contract::GetUpdates => 2,
            _ => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "GetCareContacts",
            Contract::GetDiagnosis => "GetDiagnosis",
            Contract::GetActivities => "GetActivities",
            Contract::GetObservations => "GetObservations",
            Contract::GetUpdates => "GetUpdates",
            Contract::GetCareDocumentation => "GetCareDocumentation",
        }
    }

    pub fn major(self) -> u32 {
        match self {
            Contract::GetCareContacts => 3,
            Contract::GetDiagnosis | Contract::GetCareDocumentation => 2,
            Contract::GetActivities | Contract::GetObservations | Contract::GetUpdates => 1,
        }
    }

    /// `GetCareContacts 3` — how documents are named in refusals.
    pub fn label(self) -> String {
        format!("{} {}", self.name(), self.major())
    }

    pub fn response_element(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "GetCareContactsResponse",
            Contract::GetDiagnosis => "GetDiagnosisResponse",
            Contract::GetActivities => "GetActivitiesResponse",
            Contract::GetObservations => "GetObservationsResponse",
            Contract::GetUpdates => "GetUpdatesResponse",
            Contract::GetCareDocumentation => "GetCareDocumentationResponse",
        }
    }

    /// The repeated element of the response that carries one item.
    pub fn item_element(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "careContact",
            Contract::GetDiagnosis => "diagnosis",
            Contract::GetActivities => "activityGroup",
            Contract::GetObservations => "observationGroup",
            Contract::GetUpdates => "registeredResidentEngagement",
            Contract::GetCareDocumentation => "careDocumentation",
        }
    }

    pub fn from_response_element(local: &str) -> Option<Contract> {
        [
            Contract::GetCareContacts,
            Contract::GetDiagnosis,
            Contract::GetActivities,
            Contract::GetObservations,
            Contract::GetUpdates,
            Contract::GetCareDocumentation,
        ]
        .into_iter()
            .find(|c| c.response_element() == local)
    }

    /// SOAPAction: `urn:riv:<domain>:<Contract>Responder:<major>:<Contract>`.
    pub fn soap_action(self) -> String {
        let ns = self.responder_ns();
        format!("{ns}:{}", self.name())
    }

    /// Service domain path appended to the base URL (NTjP: `/<domain path>/<Contract>/<major>/rivtabp21`).
    pub fn path(self) -> String {
        let domain = match self {
            Contract::GetCareContacts => "clinicalprocess/logistics/logistics",
            Contract::GetDiagnosis => "clinicalprocess/healthcond/description",
            Contract::GetActivities => "clinicalprocess/activity/actions",
            Contract::GetObservations => "clinicalprocess/healthcond/basic",
            Contract::GetUpdates => "itintegration/engagementindex",
            Contract::GetCareDocumentation => "clinicalprocess/healthcond/description",
        };
        format!("/{domain}/{}/{}/rivtabp21", self.name(), self.major())
    }

    /// The engagement-index service domain (`riv:…`) this contract belongs to.
    pub fn service_domain(self) -> &'static str {
        match self {
            Contract::GetCareContacts => "riv:clinicalprocess:logistics:logistics",
            Contract::GetDiagnosis => "riv:clinicalprocess:healthcond:description",
            Contract::GetActivities => "riv:clinicalprocess:activity:actions",
            Contract::GetObservations => "riv:clinicalprocess:healthcond:basic",
            Contract::GetUpdates => "riv:itintegration:engagementindex",
            Contract::GetCareDocumentation => "riv:clinicalprocess:healthcond:description",
        }
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soap_action_and_path_follow_the_pattern() {
        assert_eq!(Contract::GetCareContacts.soap_action(), "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3:GetCareContacts");
        assert_eq!(Contract::GetDiagnosis.soap_action(), "urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2:GetDiagnosis");
        assert_eq!(Contract::GetCareContacts.path(), "/clinicalprocess/logistics/logistics/GetCareContacts/3/rivtabp21");
        assert_eq!(Contract::GetObservations.path(), "/clinicalprocess/healthcond/basic/GetObservations/1/rivtabp21");
        assert_eq!(Contract::GetUpdates.path(), "/itintegration/engagementindex/GetUpdates/1/rivtabp21");
        assert_eq!(Contract::GetUpdates.soap_action(), "urn:riv:itintegration:engagementindex:GetUpdatesResponder:1:GetUpdates");
    }
}

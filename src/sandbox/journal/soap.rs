//! A small SOAP 1.1 request reader: the `LogicalAddress` header, the body element's namespace
//! and name, and the text of every element below it by path of local names
//! (`patientId/id`, `datePeriod/start`). Namespaces are checked where it matters (envelope,
//! header, body element); below the body element local names are enough.

use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

pub(crate) const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
pub(crate) const REGISTRY_NS: &str = "urn:riv:itintegration:registry:1";

#[derive(Debug, Default)]
pub(crate) struct SoapRequest {
    pub logical_address: Option<String>,
    pub body_ns: String,
    pub body_name: String,
    /// (path below the body element, text), in document order.
    pub fields: Vec<(String, String)>,
}

impl SoapRequest {
    pub(crate) fn first(&self, path: &str) -> Option<&str> {
        self.fields.iter().find(|(p, _)| p == path).map(|(_, v)| v.as_str())
    }
    pub(crate) fn all(&self, path: &str) -> Vec<String> {
        self.fields.iter().filter(|(p, _)| p == path).map(|(_, v)| v.clone()).collect()
    }
}

/// Parse a request envelope. Errors are short and carry no content of the request.
pub(crate) fn parse(bytes: &[u8]) -> Result<SoapRequest, &'static str> {
    let mut reader = NsReader::from_reader(bytes);
    reader.config_mut().trim_text(true);
    let mut out = SoapRequest::default();
    // Stack of local names; depth 1 = Envelope, 2 = Header/Body, 3 = body element.
    let mut stack: Vec<String> = Vec::new();
    let mut in_body = false;
    let mut in_header = false;
    let mut seen_envelope = false;
    let mut text = String::new();
    loop {
        let (ns, ev) = reader.read_resolved_event().map_err(|_| "the request is not well-formed XML")?;
        match ev {
            Event::Start(e) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                let ns = match ns {
                    ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
                    _ => String::new(),
                };
                text.clear();
                match stack.len() {
                    0 => {
                        if local != "Envelope" || ns != SOAP11_NS {
                            return Err("not a SOAP 1.1 envelope");
                        }
                        seen_envelope = true;
                    }
                    1 => {
                        if ns != SOAP11_NS {
                            return Err("unexpected element in the envelope");
                        }
                        in_header = local == "Header";
                        in_body = local == "Body";
                    }
                    2 if in_body => {
                        if !out.body_name.is_empty() {
                            return Err("more than one element in the SOAP body");
                        }
                        out.body_ns = ns;
                        out.body_name = local.clone();
                    }
                    2 if in_header && local == "LogicalAddress" && ns == REGISTRY_NS => {}
                    _ => {}
                }
                stack.push(local);
            }
            Event::Empty(e) => {
                let local = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                if stack.len() == 2 && in_body && out.body_name.is_empty() {
                    let ns = match ns {
                        ResolveResult::Bound(n) => String::from_utf8_lossy(n.as_ref()).into_owned(),
                        _ => String::new(),
                    };
                    out.body_ns = ns;
                    out.body_name = local;
                } else if stack.len() == 1 {
                    if let Some(n) = ["Header", "Body"].iter().find(|n| **n == local) {
                        in_body = *n == "Body";
                        in_header = false;
                    }
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|_| "bad character reference in the request")?;
                text.push_str(&s);
            }
            Event::CData(t) => {
                text.push_str(&String::from_utf8_lossy(&t.into_inner()));
            }
            Event::End(_) => {
                let depth = stack.len();
                if depth == 3 && in_header && stack[2] == "LogicalAddress" {
                    out.logical_address = Some(text.trim().to_string());
                } else if depth > 3 && in_body && !text.is_empty() {
                    out.fields.push((stack[3..].join("/"), text.trim().to_string()));
                }
                text.clear();
                stack.pop();
                if stack.len() == 1 {
                    in_body = false;
                    in_header = false;
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_envelope {
        return Err("not a SOAP 1.1 envelope");
    }
    if !stack.is_empty() {
        return Err("the request is not well-formed XML");
    }
    if out.body_name.is_empty() {
        return Err("empty SOAP body");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_header_body_and_fields() {
        let xml = br#"<?xml version="1.0"?>
<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:r="urn:riv:itintegration:registry:1">
 <s:Header><r:LogicalAddress>5565594230</r:LogicalAddress></s:Header>
 <s:Body><GetCareContacts xmlns="urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3"
   xmlns:c="urn:riv:clinicalprocess:logistics:logistics:3">
  <careUnitHSAId>SE1-A</careUnitHSAId><careUnitHSAId>SE1-B</careUnitHSAId>
  <patientId><c:id>191212121212</c:id><c:type>1.2.752.129.2.1.3.1</c:type></patientId>
  <datePeriod><c:start>20250101</c:start><c:end>20251231</c:end></datePeriod>
 </GetCareContacts></s:Body></s:Envelope>"#;
        let r = parse(xml).unwrap();
        assert_eq!(r.logical_address.as_deref(), Some("5565594230"));
        assert_eq!(r.body_name, "GetCareContacts");
        assert_eq!(r.body_ns, "urn:riv:clinicalprocess:logistics:logistics:GetCareContactsResponder:3");
        assert_eq!(r.all("careUnitHSAId"), vec!["SE1-A", "SE1-B"]);
        assert_eq!(r.first("patientId/id"), Some("191212121212"));
        assert_eq!(r.first("datePeriod/end"), Some("20251231"));
    }

    #[test]
    fn refuses_what_is_not_soap_11() {
        assert!(parse(b"<a/>").is_err());
        assert!(parse(b"<Envelope xmlns=\"http://www.w3.org/2003/05/soap-envelope\"><Body><x/></Body></Envelope>").is_err());
        assert!(parse(b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body></s:Body></s:Envelope>").is_err());
        assert!(parse(b"<s:Envelope xmlns:s=\"http://schemas.xmlsoap.org/soap/envelope/\"><s:Body><x>").is_err());
    }
}

//! Certificates for the sandbox: a throwaway CA, a server certificate for loopback and a client
//! certificate (standing in for a SITHS function certificate), written as PEM files so the daemon
//! reads them exactly as it reads a region's real ones. Also the rustls configurations that the
//! sandbox servers and tests use: mTLS required, client certificates checked against the CA.

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Paths of a generated certificate set.
#[derive(Clone, Debug)]
pub struct CertSet {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl CertSet {
    pub fn in_dir(dir: &Path) -> CertSet {
        CertSet {
            dir: dir.to_path_buf(),
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        }
    }

    /// Generate a CA, a loopback server certificate and a client certificate into `dir`
    /// (reusing files already there, so a demo restart keeps its trust).
    pub fn ensure(dir: &Path) -> Result<CertSet> {
        let set = CertSet::in_dir(dir);
        if [&set.ca, &set.server_cert, &set.server_key, &set.client_cert, &set.client_key].iter().all(|p| p.exists()) {
            return Ok(set);
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "registerbrygga sandbox CA");
        ca_params.distinguished_name = dn;
        let ca = ca_params.self_signed(&ca_key)?;

        let server_key = KeyPair::generate()?;
        let mut sp = CertificateParams::new(vec!["localhost".to_string()])?;
        sp.subject_alt_names.push(SanType::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)));
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "sandbox.localhost");
        sp.distinguished_name = dn;
        let server = sp.signed_by(&server_key, &ca, &ca_key)?;

        let client_key = KeyPair::generate()?;
        let mut cp = CertificateParams::new(Vec::<String>::new())?;
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let mut dn = DistinguishedName::new();
        // A SITHS function certificate carries the organisation's HSA id; so does ours.
        dn.push(DnType::CommonName, "SE2321000156-RBRG");
        dn.push(DnType::OrganizationName, "registerbrygga sandbox region");
        cp.distinguished_name = dn;
        let client = cp.signed_by(&client_key, &ca, &ca_key)?;

        std::fs::write(&set.ca, ca.pem())?;
        std::fs::write(&set.server_cert, server.pem())?;
        write_private(&set.server_key, &server_key.serialize_pem())?;
        std::fs::write(&set.client_cert, client.pem())?;
        write_private(&set.client_key, &client_key.serialize_pem())?;
        Ok(set)
    }

    /// rustls server configuration: our server certificate; client certificates required and
    /// verified against the sandbox CA (mTLS).
    pub fn server_config_mtls(&self) -> Result<Arc<rustls::ServerConfig>> {
        self.server_config_mtls_versions(rustls::DEFAULT_VERSIONS)
    }

    /// The same, limited to some protocol versions: under TLS 1.2 a missing client certificate
    /// is refused inside the handshake, where TLS 1.3 refuses it only after the client has
    /// finished its side (and may already be sending).
    pub fn server_config_mtls_versions(&self, versions: &[&'static rustls::SupportedProtocolVersion]) -> Result<Arc<rustls::ServerConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in load_certs(&self.ca)? {
            roots.add(c)?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(load_certs(&self.server_cert)?, load_key(&self.server_key)?)?;
        Ok(Arc::new(cfg))
    }

    /// rustls server configuration without client authentication (admin pages, tests).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        server_config_from_files(&self.server_cert, &self.server_key)
    }
}

pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)?;
    Ok(Arc::new(cfg))
}

fn write_private(p: &Path, pem: &str) -> Result<()> {
    std::fs::write(p, pem)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

pub fn load_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read certificate {}", p.display()))?;
    let certs = rustls_pemfile::certs(&mut bytes.as_slice()).collect::<Result<Vec<_>, _>>().with_context(|| format!("bad PEM in {}", p.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", p.display());
    Ok(certs)
}

pub fn load_key(p: &Path) -> Result<PrivateKeyDer<'static>> {
    let bytes = std::fs::read(p).with_context(|| format!("cannot read key {}", p.display()))?;
    rustls_pemfile::private_key(&mut bytes.as_slice())
        .with_context(|| format!("bad PEM in {}", p.display()))?
        .with_context(|| format!("no private key in {}", p.display()))
}

/// A reqwest client for our outgoing HTTPS: CA bundle, optional client identity (PEM cert +
/// key), timeouts. Used by the RIV-TA consumer and the Stratum client alike.
pub fn http_client(tls: &crate::config::TlsClientSettings, timeout: std::time::Duration, cookies: bool) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder().use_rustls_tls().timeout(timeout).connect_timeout(std::time::Duration::from_secs(10)).pool_idle_timeout(std::time::Duration::from_secs(60));
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca).with_context(|| format!("cannot read CA bundle {}", ca.display()))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("bad CA bundle {}", ca.display()))? {
            b = b.add_root_certificate(cert);
        }
        b = b.tls_built_in_root_certs(false);
    }
    if let Some(cert) = &tls.client_cert_file {
        let key = tls.client_key.as_ref().context("client_cert_file is set but client_key is not")?.read_bytes().context("client_key")?;
        let mut pem = std::fs::read(cert).with_context(|| format!("cannot read client certificate {}", cert.display()))?;
        pem.push(b'\n');
        pem.extend_from_slice(&key);
        b = b.identity(reqwest::Identity::from_pem(&pem).context("client certificate and key do not form an identity")?);
    }
    if cookies {
        b = b.cookie_store(true);
    }
    Ok(b.build()?)
}

/// The client TLS settings that trust the sandbox CA and present the sandbox client certificate.
pub fn sandbox_client_settings(set: &CertSet) -> crate::config::TlsClientSettings {
    crate::config::TlsClientSettings {
        ca_file: Some(set.ca.clone()),
        client_cert_file: Some(set.client_cert.clone()),
        client_key: Some(crate::config::Secret::from_file(&set.client_key)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn mtls_roundtrip_and_refusal_without_client_cert() {
        let dir = tempfile::tempdir().unwrap();
        let set = CertSet::ensure(dir.path()).unwrap();
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "hej" }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = axum_server::tls_rustls::RustlsConfig::from_config(set.server_config_mtls().unwrap());
        tokio::spawn(axum_server::from_tcp_rustls(listener, cfg).serve(app.into_make_service()));
        let url = format!("https://127.0.0.1:{}/", addr.port());
        let good = http_client(&sandbox_client_settings(&set), std::time::Duration::from_secs(5), false).unwrap();
        assert_eq!(good.get(&url).send().await.unwrap().text().await.unwrap(), "hej");
        let mut no_cert = sandbox_client_settings(&set);
        no_cert.client_cert_file = None;
        let bad = http_client(&no_cert, std::time::Duration::from_secs(5), false).unwrap();
        assert!(bad.get(&url).send().await.is_err(), "the server must refuse a client without a certificate");
    }
}

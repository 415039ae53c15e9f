//! rustls setup, built once at config load so a connection does no file I/O: the acceptor
//! for clients (a PEM certificate chain and key), and the connector toward servers
//! (`server_tls_*`: the CA to check their certificates against, if any, and a client
//! certificate), with the `tls-server-end-point` hash that binds SCRAM to the connection.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Client certificates the acceptor asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts<'a> {
    /// None.
    No,
    /// Optional, checked against this CA file when presented.
    Optional(&'a Path),
    /// Required and checked against this CA file.
    Required(&'a Path),
}

/// Builds the acceptor configuration from PEM files, and the `tls-server-end-point` hash of
/// the certificate (SCRAM channel binding with clients). Errors name the file and the problem.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_certs: ClientCerts<'_>,
) -> Result<(Arc<rustls::ServerConfig>, Option<Vec<u8>>), String> {
    let certs = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cert_file {}: {e}", cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!("cert_file {}: no certificate found", cert_file.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| format!("key_file {}: {e}", key_file.display()))?;
    let end_point = tls_server_end_point(&certs[0]);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_certs {
        ClientCerts::No => builder.with_no_client_auth(),
        ClientCerts::Optional(ca) | ClientCerts::Required(ca) => {
            let roots = Arc::new(root_store(ca, "client_tls_ca_file")?);
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider);
            let v = if matches!(client_certs, ClientCerts::Optional(_)) { v.allow_unauthenticated() } else { v };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_tls_ca_file: {e}"))?)
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate/key mismatch or unsupported key: {e}"))?;
    // PostgreSQL 17 clients with `sslnegotiation=direct` require ALPN "postgresql"; clients
    // that offer no ALPN (SSLRequest first) are still accepted.
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok((Arc::new(cfg), end_point))
}

/// The CA certificates of a PEM file (`setting` names it in errors).
fn root_store(path: &Path, setting: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{setting} {}: {e}", path.display()))?;
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{setting} {}: no usable CA certificate", path.display()));
    }
    Ok(roots)
}

/// The subject common name (CN) of a DER certificate: what `auth_type = "cert"` compares
/// with the user name. `None` if it has none or does not parse.
pub fn common_name(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    // serialNumber, signature, issuer, validity, subject, ... }, ... }
    let (_, body, _) = der(cert).filter(|(t, _, _)| *t == 0x30)?;
    let (_, mut tbs, _) = der(body).filter(|(t, _, _)| *t == 0x30)?;
    let mut fields = Vec::with_capacity(7);
    while !tbs.is_empty() && fields.len() < 7 {
        let (tag, content, rest) = der(tbs)?;
        fields.push((tag, content));
        tbs = rest;
    }
    // Skip the explicit version when present.
    let fields = if fields.first().is_some_and(|(t, _)| *t == 0xa0) { &fields[1..] } else { &fields[..] };
    let (tag, mut subject) = *fields.get(4)?;
    if tag != 0x30 {
        return None;
    }
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    while !subject.is_empty() {
        let (_, set, rest) = der(subject)?;
        subject = rest;
        let (_, attr, _) = der(set)?;
        let (_, oid, value) = der(attr)?;
        if oid == CN {
            let (tag, text, _) = der(value)?;
            return match tag {
                // UTF8String, PrintableString, IA5String, TeletexString (Latin-1 in practice).
                0x0c | 0x13 | 0x16 => std::str::from_utf8(text).ok().map(str::to_string),
                0x14 => Some(text.iter().map(|&b| char::from(b)).collect()),
                _ => None,
            };
        }
    }
    None
}

// === TLS toward servers ===

/// How a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Not at all (`prefer`, `require`, `allow`): encryption against passive listeners only.
    Nothing,
    /// The chain up to the configured CA (`verify-ca`).
    Chain,
    /// The chain and the host name (`verify-full`).
    ChainAndName,
}

/// The TLS versions of a `server_tls_protocols` value: `secure` (TLS 1.2 and 1.3), `all` and
/// `legacy` (the same: rustls has nothing older), or a comma list of `tlsv1.2`, `tlsv1.3`.
pub fn protocol_versions(spec: &str) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, String> {
    let mut out = Vec::new();
    for word in spec.split([',', ' ']).map(str::trim).filter(|w| !w.is_empty()) {
        match word.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" => {
                out.extend([&rustls::version::TLS12, &rustls::version::TLS13]);
            }
            "tlsv1.2" => out.push(&rustls::version::TLS12),
            "tlsv1.3" => out.push(&rustls::version::TLS13),
            "tlsv1.0" | "tlsv1.1" | "tlsv1" => {
                return Err(format!("{word} is not supported (pgsluice speaks TLS 1.2 and 1.3 only)"))
            }
            other => return Err(format!("unknown TLS protocol {other:?} (secure, all, tlsv1.2, tlsv1.3)")),
        }
    }
    if out.is_empty() {
        return Err("no TLS protocol listed".into());
    }
    out.dedup_by_key(|v| v.version);
    Ok(out)
}

/// Builds the connector configuration for servers. `ca_file` is required by the verifying
/// modes; `client_cert` is an optional (certificate, key) pair presented to the server.
pub fn client_config(
    verify: Verify,
    ca_file: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match ca_file {
        Some(path) => Some(Arc::new(root_store(path, "server_tls_ca_file")?)),
        None if verify != Verify::Nothing => {
            return Err(
                "verify-ca and verify-full need server_tls_ca_file (the CA that signs the servers' certificates)"
                    .into(),
            )
        }
        None => None,
    };
    let inner = match roots.filter(|_| verify != Verify::Nothing) {
        Some(roots) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("server_tls_ca_file: {e}"))?,
        ),
        None => None,
    };
    let verifier =
        Arc::new(ServerVerifier { inner, check_name: verify == Verify::ChainAndName, provider: provider.clone() });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = match client_cert {
        Some((cert_file, key_file)) => {
            let certs = CertificateDer::pem_file_iter(cert_file)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("server_tls_cert_file {}: {e}", cert_file.display()))?;
            let key = PrivateKeyDer::from_pem_file(key_file)
                .map_err(|e| format!("server_tls_key_file {}: {e}", key_file.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("server_tls_cert_file/server_tls_key_file: {e}"))?
        }
        None => builder.with_no_client_auth(),
    };
    // libpq offers ALPN "postgresql" (PostgreSQL 17's direct TLS needs it; older servers
    // ignore it).
    cfg.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(Arc::new(cfg))
}

/// Checks a server's certificate as `server_tls_sslmode` says. The handshake signature is
/// always verified (the server holds the key of the certificate it sent), so the
/// certificate's hash binds a SCRAM exchange to this connection even when the chain is not
/// checked.
#[derive(Debug)]
struct ServerVerifier {
    /// The chain verifier (verify-ca, verify-full).
    inner: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    /// verify-full: the certificate must be valid for the host name.
    check_name: bool,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else { return Ok(rustls::client::danger::ServerCertVerified::assertion()) };
        match inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName | rustls::CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// SCRAM's `tls-server-end-point` channel-binding data (RFC 5929): the hash of the server's
/// certificate, with the hash function of its signature algorithm (SHA-256 for MD5 and
/// SHA-1), as PostgreSQL computes it. `None` for a certificate whose algorithm PostgreSQL
/// cannot bind either (Ed25519, say) or that does not parse.
pub fn tls_server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let oid = signature_algorithm_oid(cert)?;
    // 1.2.840.113549.1.1.{4,5,11,12,13}: md5/sha1/sha256/sha384/sha512 with RSA;
    // 1.2.840.10045.4.1 and 4.3.{2,3,4}: ecdsa with sha1/sha256/sha384/sha512.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let bits = match oid {
        [p @ .., 4 | 5 | 11] if p == RSA => 256,
        [p @ .., 12] if p == RSA => 384,
        [p @ .., 13] if p == RSA => 512,
        [p @ .., 1] if p == ECDSA => 256,
        [p @ .., 3, 2] if p == ECDSA => 256,
        [p @ .., 3, 3] if p == ECDSA => 384,
        [p @ .., 3, 4] if p == ECDSA => 512,
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The OID bytes of `Certificate.signatureAlgorithm` (DER: SEQUENCE { tbsCertificate,
/// signatureAlgorithm SEQUENCE { OID, ... }, signatureValue }).
fn signature_algorithm_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, body, _) = der(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der(body)?; // tbsCertificate
    let (tag, alg, _) = der(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows).
fn der(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = b.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, &b| acc << 8 | usize::from(b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_names_are_read_from_the_subject() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["host".into()]).unwrap();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "Acme");
        params.distinguished_name.push(rcgen::DnType::CommonName, "alice");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()).as_deref(), Some("alice"));
        let mut params = rcgen::CertificateParams::new(vec!["host".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "no CN");
        assert_eq!(common_name(params.self_signed(&key).unwrap().der()), None);
        assert_eq!(common_name(b"\x30\x00"), None);
    }

    #[test]
    fn protocol_lists() {
        assert_eq!(protocol_versions("secure").unwrap().len(), 2);
        assert_eq!(protocol_versions("tlsv1.3").unwrap().len(), 1);
        assert_eq!(protocol_versions("tlsv1.2, tlsv1.3").unwrap().len(), 2);
        assert!(protocol_versions("tlsv1.1").unwrap_err().contains("not supported"));
        assert!(protocol_versions("sslv3").is_err());
        assert!(protocol_versions("").is_err());
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        for (alg, len) in [(&rcgen::PKCS_ECDSA_P256_SHA256, 32), (&rcgen::PKCS_ECDSA_P384_SHA384, 48)] {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let cert = rcgen::CertificateParams::new(vec!["db".into()]).unwrap().self_signed(&key).unwrap();
            let hash = tls_server_end_point(cert.der()).unwrap();
            assert_eq!(hash.len(), len);
        }
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["db".into()]).unwrap().self_signed(&key).unwrap();
        assert_eq!(tls_server_end_point(cert.der()), None, "PostgreSQL cannot bind Ed25519 either");
        assert_eq!(tls_server_end_point(b"\x30\x03\x02\x01"), None);
        assert_eq!(tls_server_end_point(b""), None);
    }
}

//! Client certificates (SPEC §4): validation against the configured CAs (rustls-webpki on
//! aws-lc-rs, client-auth usage, validity at the current time), the identity a certificate
//! carries (a SPIFFE URI SAN, else the first DNS SAN, else the subject DN), its SHA-256
//! thumbprint (`x5t#S256`, base64url) as `key_id`, and RFC 8705 certificate-bound tokens: a
//! token whose claims carry `cnf.x5t#S256` is accepted only with that certificate.

use std::{path::PathBuf, sync::Arc};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use serde_json::{Map, Value};
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

use crate::{
    credentials::parse_pem_chain,
    decision::{CredentialType, Denial, Principal, Reason},
};

/// Issuer name reported for certificate principals.
pub const ISSUER: &str = "client_certificates";

/// A certificate chain, leaf first (DER).
pub type Chain = Vec<CertificateDer<'static>>;

/// The `x5t#S256` thumbprint of a DER certificate (RFC 8705 §3.1).
pub fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der))
}

/// Trusted client CAs.
pub struct CertificateVerifier {
    anchors: Vec<TrustAnchor<'static>>,
}

impl std::fmt::Debug for CertificateVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateVerifier")
            .field("anchors", &self.anchors.len())
            .finish()
    }
}

impl CertificateVerifier {
    /// Loads every certificate in the CA files as a trust anchor; `None` without CA files.
    pub fn load(ca_files: &[PathBuf]) -> Result<Option<Self>, String> {
        if ca_files.is_empty() {
            return Ok(None);
        }
        let mut anchors = Vec::new();
        for path in ca_files {
            let text = std::fs::read_to_string(path)
                .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
            let chain =
                parse_pem_chain(&text).map_err(|err| format!("{}: {err}", path.display()))?;
            for der in &chain {
                let anchor = webpki::anchor_from_trusted_cert(der).map_err(|err| {
                    format!("{}: not a usable CA certificate: {err}", path.display())
                })?;
                anchors.push(anchor.to_owned());
            }
        }
        Ok(Some(Self { anchors }))
    }

    /// Validates the chain and returns the certificate's principal.
    pub fn verify(&self, chain: &[CertificateDer<'static>]) -> Result<Arc<Principal>, Denial> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| Denial::new(Reason::MissingCredential, "no client certificate"))?;
        let end_entity = EndEntityCert::try_from(leaf).map_err(|_| {
            Denial::new(
                Reason::MalformedCredential,
                "client certificate is not valid DER",
            )
        })?;
        end_entity
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &self.anchors,
                intermediates,
                UnixTime::now(),
                KeyUsage::client_auth(),
                None,
                None,
            )
            .map_err(|err| match err {
                webpki::Error::CertExpired { .. } => {
                    Denial::new(Reason::Expired, "client certificate has expired")
                }
                webpki::Error::CertNotValidYet { .. } => {
                    Denial::new(Reason::NotYetValid, "client certificate is not valid yet")
                }
                webpki::Error::UnknownIssuer => Denial::new(
                    Reason::UntrustedIssuer,
                    "client certificate is not signed by a trusted CA",
                ),
                other => Denial::new(
                    Reason::InvalidSignature,
                    format!("client certificate does not verify: {other}"),
                ),
            })?;
        identity(leaf).map(Arc::new)
    }
}

/// The principal a (validated) certificate names.
fn identity(der: &[u8]) -> Result<Principal, Denial> {
    let malformed = || {
        Denial::new(
            Reason::MalformedCredential,
            "client certificate cannot be parsed",
        )
    };
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| malformed())?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Some(san) = cert.subject_alternative_name().map_err(|_| malformed())? {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                GeneralName::DNSName(dns) => dns_names.push((*dns).to_owned()),
                _ => {}
            }
        }
    }
    let subject_dn = cert.subject().to_string();
    let subject = uris
        .iter()
        .find(|uri| uri.starts_with("spiffe://"))
        .or_else(|| dns_names.first())
        .cloned()
        .unwrap_or_else(|| subject_dn.clone());
    let x5t = thumbprint(der);
    let expires_at = cert.validity().not_after.timestamp();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(subject.clone()));
    claims.insert("subject_dn".into(), Value::String(subject_dn));
    claims.insert("issuer_dn".into(), Value::String(cert.issuer().to_string()));
    claims.insert("serial".into(), Value::String(cert.raw_serial_as_string()));
    claims.insert("uris".into(), uris.into_iter().map(Value::String).collect());
    claims.insert(
        "dns_names".into(),
        dns_names.into_iter().map(Value::String).collect(),
    );
    claims.insert("x5t#S256".into(), Value::String(x5t.clone()));
    Ok(Principal::new(
        subject,
        ISSUER.into(),
        CredentialType::ClientCertificate,
        claims,
        Vec::new(),
        Some(expires_at),
        x5t.into(),
    ))
}

/// RFC 8705 §3: a token bound to a certificate (`cnf.x5t#S256`) needs that certificate.
pub fn check_binding(principal: &Principal, leaf: Option<&[u8]>) -> Result<(), Denial> {
    let Some(expected) = principal.confirmation("x5t#S256") else {
        return Ok(());
    };
    let mismatch = |message: &str| Denial::new(Reason::CertificateMismatch, message);
    let expected = expected
        .as_str()
        .ok_or_else(|| mismatch("cnf.x5t#S256 is not a string"))?;
    let leaf = leaf.ok_or_else(|| {
        mismatch("the token is bound to a client certificate and none was presented")
    })?;
    let actual = thumbprint(leaf);
    let same =
        aws_lc_rs::constant_time::verify_slices_are_equal(actual.as_bytes(), expected.as_bytes())
            .is_ok();
    if same {
        Ok(())
    } else {
        Err(mismatch("the token is bound to another client certificate"))
    }
}

//! Per-deployment agent certificates: minting one self-signed certificate + key per deployment
//! (rcgen), and a rustls client configuration that trusts exactly that certificate.
//!
//! Why pinning rather than a CA: a deployment's machines get their certificate through Terraform
//! before anyone knows their addresses, and the backend is the only client. So the backend
//! compares the presented end-entity certificate byte for byte with the one it minted, and then
//! lets rustls check the handshake signature against it, which proves the agent holds the key.
//! Names and validity dates are therefore not checked: the certificate's SANs (`localhost`,
//! `127.0.0.1`, `::1` and `<deployment>.agent.nim.invalid`) only make it recognisable, and it is
//! valid for 30 years so that a long-lived deployment never breaks on an expiry nobody checks.

use std::{fmt, sync::Arc};

use chrono::{Datelike, Utc};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

/// A deployment's agent certificate and private key, both PEM. The key goes to the machines
/// (as a sensitive Terraform variable) and is stored encrypted; the certificate is the pin.
pub struct DeploymentCert {
    pub cert_pem: String,
    pub key_pem: SecretString,
}

impl fmt::Debug for DeploymentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeploymentCert").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("failed to generate the agent certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the pinned agent certificate is not a PEM certificate: {0}")]
    Parse(String),
}

/// Mints the self-signed ECDSA P-256 certificate a deployment's agents will serve.
pub fn mint_deployment_cert(deployment_id: &str) -> Result<DeploymentCert, CertError> {
    let key = rcgen::KeyPair::generate()?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        format!("{deployment_id}.agent.nim.invalid"),
    ];
    let mut params = rcgen::CertificateParams::new(names)?;
    params.distinguished_name.push(rcgen::DnType::CommonName, format!("nim-agent {deployment_id}"));
    let yesterday = Utc::now() - chrono::Duration::days(1);
    // Month and day are at most 12 and 31, so the conversions cannot fail.
    let (month, day) = (yesterday.month() as u8, yesterday.day() as u8);
    params.not_before = rcgen::date_time_ymd(yesterday.year(), month, day);
    params.not_after = rcgen::date_time_ymd(yesterday.year() + 30, month, day.min(28));
    let cert = params.self_signed(&key)?;
    Ok(DeploymentCert { cert_pem: cert.pem(), key_pem: SecretString::from(key.serialize_pem()) })
}

/// The one certificate a deployment's agents may present.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentPin {
    der: CertificateDer<'static>,
}

impl AgentPin {
    /// The first certificate of a PEM text (the deployment's `cert_pem`).
    pub fn from_pem(pem: &str) -> Result<Self, CertError> {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .map_err(|err| CertError::Parse(err.to_string()))?;
        Ok(Self { der })
    }

    /// SHA-256 of the certificate's DER: a stable identity for caches and logs.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.der.as_ref()).into()
    }

    /// A TLS client configuration that accepts this certificate and nothing else.
    pub fn client_config(&self) -> ClientConfig {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = PinnedCertVerifier {
            pinned: self.der.clone(),
            algorithms: provider.signature_verification_algorithms,
        };
        ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    }
}

impl fmt::Debug for AgentPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex: String = self.fingerprint().iter().map(|b| format!("{b:02x}")).collect();
        f.debug_tuple("AgentPin").field(&format_args!("sha256:{hex}")).finish()
    }
}

/// Accepts a server whose end-entity certificate is exactly the pinned one. Handshake
/// signatures are still verified with the provider's algorithms, so only the holder of the
/// pinned certificate's key gets through.
#[derive(Debug)]
struct PinnedCertVerifier {
    pinned: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// The error a refused agent certificate carries; its `Debug` is what rustls prints.
struct PinMismatch;

impl fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "the agent presented a certificate other than the one pinned for its deployment",
        )
    }
}

impl fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.pinned.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(PinMismatch),
            ))))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_certificates_are_distinct_and_parse_as_pins() {
        let first = mint_deployment_cert("d1").unwrap();
        let second = mint_deployment_cert("d1").unwrap();
        let (a, b) = (
            AgentPin::from_pem(&first.cert_pem).unwrap(),
            AgentPin::from_pem(&second.cert_pem).unwrap(),
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert!(secrecy::ExposeSecret::expose_secret(&first.key_pem).contains("PRIVATE KEY"));
    }

    #[test]
    fn the_verifier_accepts_only_the_pinned_certificate() {
        let pinned = AgentPin::from_pem(&mint_deployment_cert("d1").unwrap().cert_pem).unwrap();
        let other = AgentPin::from_pem(&mint_deployment_cert("d2").unwrap().cert_pem).unwrap();
        let verifier = PinnedCertVerifier {
            pinned: pinned.der.clone(),
            algorithms: rustls::crypto::ring::default_provider().signature_verification_algorithms,
        };
        let name = ServerName::try_from("localhost").unwrap();
        assert!(verifier.verify_server_cert(&pinned.der, &[], &name, &[], UnixTime::now()).is_ok());
        let err =
            verifier.verify_server_cert(&other.der, &[], &name, &[], UnixTime::now()).unwrap_err();
        assert!(err.to_string().contains("other than the one pinned"), "{err}");
    }

    #[test]
    fn garbage_is_not_a_pin() {
        assert!(matches!(AgentPin::from_pem("not a certificate"), Err(CertError::Parse(_))));
    }
}

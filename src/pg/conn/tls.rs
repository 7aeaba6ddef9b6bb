//! TLS (rustls with the ring provider) for the SSLRequest handshake, the
//! certificate checks of each sslmode, and the `tls-server-end-point`
//! channel binding of SCRAM-SHA-256-PLUS.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;

use super::error::PgError;
use super::params::{ConnParams, SslMode};

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The rustls configuration and server name for `params` (sslmode other
/// than disable).
pub(crate) fn client_config(
    params: &ConnParams,
) -> Result<(Arc<ClientConfig>, ServerName<'static>), PgError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Tls(e.to_string()))?;
    let host_name = ServerName::try_from(params.host.clone()).ok();
    let mode = match params.sslmode {
        // libpq: "require" with a root certificate file verifies the chain.
        SslMode::Require if params.sslrootcert.is_some() => SslMode::VerifyCa,
        m => m,
    };
    let mut config = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth(),
        SslMode::VerifyCa => {
            let inner = WebPkiServerVerifier::builder_with_provider(roots(params)?, provider)
                .build()
                .map_err(|e| PgError::Tls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        SslMode::VerifyFull => {
            if host_name.is_none() {
                return Err(PgError::Tls(format!(
                    "sslmode=verify-full: {:?} is not a valid host name",
                    params.host
                )));
            }
            builder
                .with_root_certificates(roots(params)?)
                .with_no_client_auth()
        }
    };
    // What libpq 17 sends; older servers ignore it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    let name = host_name.unwrap_or_else(|| ServerName::try_from("localhost").unwrap());
    Ok((Arc::new(config), name))
}

/// Trusted roots: `sslrootcert`, else the system's.
fn roots(params: &ConnParams) -> Result<Arc<RootCertStore>, PgError> {
    match &params.sslrootcert {
        Some(path) => {
            let mut store = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| {
                    PgError::Tls(format!(
                        "could not read sslrootcert {}: {e}",
                        path.display()
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    PgError::Tls(format!(
                        "could not read sslrootcert {}: {e}",
                        path.display()
                    ))
                })?;
            for cert in certs {
                store.add(cert).map_err(|e| {
                    PgError::Tls(format!("bad certificate in {}: {e}", path.display()))
                })?;
            }
            if store.is_empty() {
                return Err(PgError::Tls(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            Ok(Arc::new(store))
        }
        None => system_roots(),
    }
}

fn system_roots() -> Result<Arc<RootCertStore>, PgError> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "no system root certificates found{why}; set sslrootcert (PGSSLROOTCERT)"
                ));
            }
            Ok(Arc::new(store))
        })
        .clone()
        .map_err(PgError::Tls)
}

/// sslmode=require: any certificate (the handshake signatures are still
/// checked, so the connection is encrypted with whoever holds the key).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca: the chain must lead to a trusted root; the name in
/// the certificate is not checked. (WebPkiServerVerifier checks the chain
/// before the name, so a name error means the chain was good.)
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `tls-server-end-point` channel binding data (RFC 5929): the hash of the
/// server certificate with its signature's hash function, SHA-256 for MD5
/// and SHA-1. `None` for signature algorithms without a single hash
/// (RSASSA-PSS, Ed25519, ...): then SCRAM runs without channel binding.
pub(crate) fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA_SHA2: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03];
    const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
    let oid = signature_algorithm_oid(cert_der)?;
    let bits = match oid {
        o if o.len() == RSA.len() + 1 && o.starts_with(RSA) => match o[RSA.len()] {
            4 | 5 | 11 => 256, // md5, sha1, sha256 WithRSAEncryption
            12 => 384,
            13 => 512,
            _ => return None,
        },
        o if o == ECDSA_SHA1 => 256,
        o if o.len() == ECDSA_SHA2.len() + 1 && o.starts_with(ECDSA_SHA2) => {
            match o[ECDSA_SHA2.len()] {
                2 => 256,
                3 => 384,
                4 => 512,
                _ => return None,
            }
        }
        _ => return None,
    };
    Some(match bits {
        256 => sha2::Sha256::digest(cert_der).to_vec(),
        384 => sha2::Sha384::digest(cert_der).to_vec(),
        _ => sha2::Sha512::digest(cert_der).to_vec(),
    })
}

/// The OID (content bytes) of `Certificate.signatureAlgorithm`.
fn signature_algorithm_oid(der: &[u8]) -> Option<&[u8]> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE, signatureAlgorithm
    // SEQUENCE { algorithm OID, ... }, signature BIT STRING }
    let (tag, cert, _) = der_tlv(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, after_tbs) = der_tlv(cert)?;
    let (tag, alg, _) = der_tlv(after_tbs)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_tlv(alg)?;
    (tag == 0x06).then_some(oid)
}

/// One DER TLV: (tag, contents, rest).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (first as usize, 2)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for &byte in b.get(2..2 + n)? {
            len = (len << 8) | byte as usize;
        }
        (len, 2 + n)
    };
    let contents = b.get(header..header.checked_add(len)?)?;
    Some((tag, contents, &b[header + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_signature_algorithm() {
        // SEQUENCE { SEQUENCE {02 01 01}, SEQUENCE { OID sha256WithRSA, NULL }, BIT STRING }
        let oid = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(&oid);
        alg.extend_from_slice(&[0x05, 0x00]);
        let mut body = vec![0x30, 0x03, 0x02, 0x01, 0x01, 0x30, alg.len() as u8];
        body.extend_from_slice(&alg);
        body.extend_from_slice(&[0x03, 0x02, 0x00, 0xff]);
        let mut cert = vec![0x30, 0x81, body.len() as u8];
        cert.extend_from_slice(&body);
        assert_eq!(signature_algorithm_oid(&cert), Some(&oid[..]));
        assert_eq!(
            tls_server_end_point(&cert),
            Some(sha2::Sha256::digest(&cert).to_vec())
        );
        assert_eq!(signature_algorithm_oid(&cert[..10]), None);
        assert_eq!(tls_server_end_point(b"garbage"), None);
    }
}

//! TLS 1.3 settings shared by both byte pipes (QUIC and TLS over TCP).
//!
//! Owns the relay's self-signed certificate generation, the ring crypto provider with one key
//! exchange group, the relay's and the client's rustls configurations (TLS 1.3 only, ALPN
//! `sotto/1`, no 0-RTT, no tickets, no resumption, no SNI) and the certificate verifier that
//! accepts any certificate but still checks the TLS 1.3 signature. It does not open
//! connections ([`crate::quic`], [`crate::tcp`]) and never authenticates the relay: the Noise
//! handshake does (see the crate documentation).

use std::net::IpAddr;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sotto_protocol::ALPN;

use crate::TransportError;

/// Generates a self-signed TLS certificate for a relay: `(certificate DER, PKCS#8 key DER)`.
///
/// The certificate only satisfies TLS; clients do not validate it (see the module docs).
/// `hostname` becomes its subject alternative name.
///
/// # Errors
/// If rcgen cannot create the key or the certificate (for example an invalid name).
pub fn self_signed_cert(hostname: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_owned()])?;
    Ok((ck.cert.der().to_vec(), ck.key_pair.serialize_der()))
}

fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // One group keeps ClientHellos uniform; ring has no post-quantum hybrid to prefer.
    p.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    Arc::new(p)
}

/// The relay's TLS settings, for QUIC and for TCP: its certificate, ALPN, TLS 1.3 only, no
/// 0-RTT, no session tickets, no resumption.
pub(crate) fn tls_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TransportError> {
    let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tls)
}

/// The client's TLS settings, for QUIC and for TCP: any certificate (TLS 1.3 signature
/// still verified), ALPN, TLS 1.3 only, no 0-RTT, no resumption, no SNI.
pub(crate) fn tls_client_config() -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate {
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    tls.resumption = rustls::client::Resumption::disabled();
    // QUIC passes an IP literal as server name (no SNI either way); over TCP through a
    // proxy the client does not know the relay's address, so SNI is simply off.
    tls.enable_sni = false;
    Ok(tls)
}

/// Accepts any server certificate, but still verifies that the TLS 1.3 handshake was signed
/// by the key in the certificate presented. The relay's identity is checked by Noise.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The certificate is self-signed and is not the relay's identity (DESIGN.md).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled; QUIC requires it.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

pub(crate) fn ip_server_name(ip: IpAddr) -> String {
    // `ServerName::try_from` parses bare IPv6 text (no brackets) as an IP address.
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_server_names_send_no_sni() {
        for ip in ["127.0.0.1", "::1"] {
            let name = ip_server_name(ip.parse().unwrap());
            assert!(matches!(
                ServerName::try_from(name.as_str()).unwrap(),
                ServerName::IpAddress(_)
            ));
        }
    }
}

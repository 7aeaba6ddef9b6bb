//! Authentication of agent connections: the shared token's
//! challenge-response and the TLS configurations (optionally mutual).
//!
//! The token never crosses the wire. The agent sends a 32-byte nonce; the
//! client proves it knows the token with
//! `HMAC-SHA256(token, "cbdr-agent-v1 client" || nonce || client_nonce)`;
//! the agent proves it too with
//! `HMAC-SHA256(token, "cbdr-agent-v1 agent" || client_nonce || nonce)`, so
//! a client never sends a job to an impostor. MACs are checked in constant
//! time. With mutual TLS, the client certificate authenticates the caller
//! (and the token, when one is set, is checked as well).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use hmac::{Hmac, KeyInit, Mac};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::config::AgentConfig;
use crate::error::{Error, Result};

/// Environment variable holding the token when the config has none.
pub const TOKEN_ENV: &str = "CBDR_AGENT_TOKEN";
/// Shortest token accepted (characters).
pub const MIN_TOKEN_LEN: usize = 16;
pub const NONCE_LEN: usize = 32;

const CLIENT_LABEL: &[u8] = b"cbdr-agent-v1 client";
const AGENT_LABEL: &[u8] = b"cbdr-agent-v1 agent";
const SESSION_LABEL: &[u8] = b"cbdr-agent-v1 session";

/// How to make a token, for messages.
pub const TOKEN_HOWTO: &str = "create one with `openssl rand -hex 32 > /etc/cbdr/agent.token && chmod 600 /etc/cbdr/agent.token` and set `token_file = \"/etc/cbdr/agent.token\"` in the [agent] section (or `token = \"...\"`, or $CBDR_AGENT_TOKEN), the same on the coordinator and every agent host";

/// The shared secret; never printed.
#[derive(Clone)]
pub struct Token(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from text: surrounding whitespace trimmed, at least
    /// [`MIN_TOKEN_LEN`] characters. `origin` names where it came from.
    pub fn from_text(text: &str, origin: &str) -> Result<Token> {
        let t = text.trim();
        if t.chars().count() < MIN_TOKEN_LEN {
            return Err(Error::Usage(format!(
                "the agent token from {origin} is too short ({} characters; at least {MIN_TOKEN_LEN} are needed): {TOKEN_HOWTO}",
                t.chars().count()
            )));
        }
        Ok(Token(Zeroizing::new(t.as_bytes().to_vec())))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// The key of one authenticated session: HMAC(token, session label ||
    /// nonce || client_nonce). Both sides derive it from the handshake; it
    /// never crosses the wire, and each session's differs.
    pub fn session_key(&self, nonce: &[u8], client_nonce: &[u8]) -> SessionKey {
        let mut m = self.mac();
        m.update(SESSION_LABEL);
        m.update(nonce);
        m.update(client_nonce);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&m.finalize().into_bytes());
        SessionKey(key)
    }

    /// The client's proof: HMAC(token, client label || nonce || client_nonce).
    pub fn client_mac(&self, nonce: &[u8], client_nonce: &[u8]) -> Vec<u8> {
        let mut m = self.mac();
        m.update(CLIENT_LABEL);
        m.update(nonce);
        m.update(client_nonce);
        m.finalize().into_bytes().to_vec()
    }

    /// The agent's proof: HMAC(token, agent label || client_nonce || nonce).
    pub fn agent_mac(&self, client_nonce: &[u8], nonce: &[u8]) -> Vec<u8> {
        let mut m = self.mac();
        m.update(AGENT_LABEL);
        m.update(client_nonce);
        m.update(nonce);
        m.finalize().into_bytes().to_vec()
    }

    /// Checks a client's proof in constant time.
    pub fn verify_client_mac(&self, nonce: &[u8], client_nonce: &[u8], mac: &[u8]) -> bool {
        let mut m = self.mac();
        m.update(CLIENT_LABEL);
        m.update(nonce);
        m.update(client_nonce);
        m.verify_slice(mac).is_ok()
    }

    /// Checks an agent's proof in constant time.
    pub fn verify_agent_mac(&self, client_nonce: &[u8], nonce: &[u8], mac: &[u8]) -> bool {
        let mut m = self.mac();
        m.update(AGENT_LABEL);
        m.update(client_nonce);
        m.update(nonce);
        m.verify_slice(mac).is_ok()
    }
}

/// 32 bytes from the OS random number generator.
pub fn new_nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).expect("the OS random number generator failed");
    n
}

/// The key of one authenticated agent session (see
/// [`Token::session_key`]): seals what the caller sends in confidence
/// (files with secrets) when the connection is not TLS.
#[derive(Clone)]
pub struct SessionKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(<redacted>)")
    }
}

/// Bytes sealed with a session key: XChaCha20-Poly1305, a random nonce,
/// bound to `label` (e.g. the file's path) as associated data.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Sealed {
    /// 24 bytes, hex.
    pub nonce: String,
    /// Ciphertext and tag, hex.
    pub ciphertext: String,
}

impl SessionKey {
    pub fn seal(&self, label: &str, plaintext: &[u8]) -> Sealed {
        use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
        use chacha20poly1305::XChaCha20Poly1305;
        let cipher = XChaCha20Poly1305::new(&(*self.0).into());
        let nonce: [u8; 24] = crate::codec::random_bytes();
        let ciphertext = cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: label.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any length");
        Sealed {
            nonce: hex::encode(nonce),
            ciphertext: hex::encode(ciphertext),
        }
    }

    /// The plaintext, or `None` when the bytes were not sealed with this
    /// key for this label (altered, another session, another label).
    pub fn open(&self, label: &str, sealed: &Sealed) -> Option<Zeroizing<Vec<u8>>> {
        use chacha20poly1305::aead::{Aead, KeyInit as _, Payload};
        use chacha20poly1305::XChaCha20Poly1305;
        let nonce: [u8; 24] = hex::decode(&sealed.nonce).ok()?.try_into().ok()?;
        let ciphertext = hex::decode(&sealed.ciphertext).ok()?;
        let cipher = XChaCha20Poly1305::new(&(*self.0).into());
        cipher
            .decrypt(
                &nonce.into(),
                Payload {
                    msg: &ciphertext,
                    aad: label.as_bytes(),
                },
            )
            .ok()
            .map(Zeroizing::new)
    }
}

/// A nonce received as hex: exactly [`NONCE_LEN`] bytes.
pub fn parse_nonce(hex_text: &str) -> Option<Vec<u8>> {
    hex::decode(hex_text).ok().filter(|n| n.len() == NONCE_LEN)
}

/// The token: `token_file`, else `token`, else $CBDR_AGENT_TOKEN; `None`
/// when none is set. A token file readable by group or others is
/// accepted with a warning.
pub fn load_token(config: &AgentConfig) -> Result<Option<Token>> {
    load_token_from(config, std::env::var(TOKEN_ENV).ok())
}

fn load_token_from(config: &AgentConfig, env: Option<String>) -> Result<Option<Token>> {
    if let Some(path) = &config.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Usage(format!(
                "[agent] token_file {}: cannot read it: {e}",
                path.display()
            ))
        })?;
        warn_if_readable_by_others(path);
        let text = Zeroizing::new(text);
        return Token::from_text(&text, &format!("token_file {}", path.display())).map(Some);
    }
    if let Some(t) = &config.token {
        return Token::from_text(t, "[agent] token").map(Some);
    }
    match env.filter(|t| !t.trim().is_empty()) {
        Some(t) => {
            let t = Zeroizing::new(t);
            Token::from_text(&t, &format!("${TOKEN_ENV}")).map(Some)
        }
        None => Ok(None),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                "the agent token file {} is readable by other users (mode {mode:03o}): run `chmod 600 {}`",
                path.display(),
                path.display()
            );
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
        .map_err(|e| {
            Error::Usage(format!(
                "[agent] {key} {}: cannot read PEM certificates: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::Usage(format!(
            "[agent] {key} {}: holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        Error::Usage(format!(
            "[agent] {key} {}: cannot read a PEM private key: {e}",
            path.display()
        ))
    })
}

fn load_roots(key: &str, path: &Path) -> Result<Arc<RootCertStore>> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        store.add(cert).map_err(|e| {
            Error::Usage(format!(
                "[agent] {key} {}: not a usable CA certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(Arc::new(store))
}

fn tls_error(what: &str, e: rustls::Error) -> Error {
    Error::Usage(format!("[agent] {what}: {e}"))
}

/// The agent's TLS configuration: `None` without `tls_cert`/`tls_key`;
/// client certificates required when `tls_client_ca` is set.
pub fn server_tls(config: &AgentConfig) -> Result<Option<Arc<ServerConfig>>> {
    let (cert, key) = match (&config.tls_cert, &config.tls_key) {
        (None, None) => {
            if config.tls_client_ca.is_some() {
                return Err(Error::Usage(
                    "[agent] tls_client_ca (mutual TLS) needs TLS: set tls_cert and tls_key too"
                        .into(),
                ));
            }
            return Ok(None);
        }
        (Some(c), Some(k)) => (c, k),
        _ => {
            return Err(Error::Usage(
                "[agent] tls_cert and tls_key go together: set both (PEM certificate chain and its private key) or neither".into(),
            ))
        }
    };
    let certs = load_certs("tls_cert", cert)?;
    let key = load_key("tls_key", key)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS", e))?;
    let builder = match &config.tls_client_ca {
        Some(ca) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(
                load_roots("tls_client_ca", ca)?,
                provider(),
            )
            .build()
            .map_err(|e| Error::Usage(format!("[agent] tls_client_ca {}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(certs, key)
        .map_err(|e| tls_error("tls_cert/tls_key", e))?;
    Ok(Some(Arc::new(server)))
}

/// The client's TLS configuration: `None` without `tls_ca` (plain TCP).
/// The agent's certificate is checked against `tls_ca` and the host name
/// (or IP address) the agent is called by; `tls_client_cert`/
/// `tls_client_key` are presented for mutual TLS.
pub fn client_tls(config: &AgentConfig) -> Result<Option<Arc<ClientConfig>>> {
    let Some(ca) = &config.tls_ca else {
        if config.tls_client_cert.is_some() {
            return Err(Error::Usage(
                "[agent] tls_client_cert needs tls_ca: set tls_ca to the CA that signed the agents' certificates".into(),
            ));
        }
        return Ok(None);
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error("TLS", e))?
        .with_root_certificates(load_roots("tls_ca", ca)?);
    let client = match (&config.tls_client_cert, &config.tls_client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(
                load_certs("tls_client_cert", c)?,
                load_key("tls_client_key", k)?,
            )
            .map_err(|e| tls_error("tls_client_cert/tls_client_key", e))?,
        _ => {
            return Err(Error::Usage(
                "[agent] tls_client_cert and tls_client_key go together: set both or neither"
                    .into(),
            ))
        }
    };
    Ok(Some(Arc::new(client)))
}

/// The host part of `host:port` / `[v6]:port`, as a TLS server name.
pub fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = if let Some(rest) = addr.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr)
    };
    ServerName::try_from(host.to_string()).map_err(|_| {
        Error::Usage(format!(
            "agent address {addr:?}: {host:?} is not a host name or IP address usable for TLS"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(t: &str) -> Token {
        Token::from_text(t, "test").unwrap()
    }

    #[test]
    fn sealed_bytes_open_only_with_the_same_session_and_label() {
        let t = Token::from_text("0123456789abcdef-token", "test").unwrap();
        let (nonce, client_nonce) = (new_nonce(), new_nonce());
        let k = t.session_key(&nonce, &client_nonce);
        let sealed = k.seal("/etc/cbdr/key", b"secret key bytes");
        assert!(!sealed.ciphertext.contains(&hex::encode(b"secret")));
        assert_eq!(
            k.open("/etc/cbdr/key", &sealed).unwrap().as_slice(),
            b"secret key bytes"
        );
        // Same token, the other side's derivation: the same key.
        let k2 = t.session_key(&nonce, &client_nonce);
        assert!(k2.open("/etc/cbdr/key", &sealed).is_some());
        // Another label, another session, a flipped byte: refused.
        assert!(k.open("/etc/cbdr/other", &sealed).is_none());
        let other = t.session_key(&new_nonce(), &client_nonce);
        assert!(other.open("/etc/cbdr/key", &sealed).is_none());
        let mut bad = sealed.clone();
        let flipped = if bad.ciphertext.starts_with('0') {
            "1"
        } else {
            "0"
        };
        bad.ciphertext.replace_range(0..1, flipped);
        assert!(k.open("/etc/cbdr/key", &bad).is_none());
    }

    #[test]
    fn handshake_macs_prove_the_token_both_ways() {
        let t = token("0123456789abcdef0123456789abcdef");
        let (nonce, client_nonce) = (new_nonce(), new_nonce());
        assert_ne!(nonce, client_nonce);
        let cm = t.client_mac(&nonce, &client_nonce);
        assert_eq!(cm.len(), 32);
        assert!(t.verify_client_mac(&nonce, &client_nonce, &cm));
        let am = t.agent_mac(&client_nonce, &nonce);
        assert!(t.verify_agent_mac(&client_nonce, &nonce, &am));
        // The two directions never give the same MAC: a client's proof
        // cannot be reflected back as the agent's.
        assert_ne!(cm, am);
        assert!(!t.verify_agent_mac(&nonce, &client_nonce, &cm));
        assert!(!t.verify_client_mac(&client_nonce, &nonce, &am));

        // Another token, another nonce, a truncated or flipped MAC: refused.
        let other = token("0123456789abcdef0123456789abcdeX");
        assert!(!other.verify_client_mac(&nonce, &client_nonce, &cm));
        assert!(!t.verify_client_mac(&new_nonce(), &client_nonce, &cm));
        assert!(!t.verify_client_mac(&nonce, &client_nonce, &cm[..31]));
        assert!(!t.verify_client_mac(&nonce, &client_nonce, &[]));
        let mut flipped = cm.clone();
        flipped[0] ^= 1;
        assert!(!t.verify_client_mac(&nonce, &client_nonce, &flipped));
    }

    #[test]
    fn the_mac_is_hmac_sha256_over_the_documented_input() {
        // RFC 4231 test case 2 as a check of the primitive, then the
        // framing: label || nonce || client_nonce.
        let key = token("Jefe-is-the-key-here");
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        m.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(m.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe-is-the-key-here").unwrap();
        m.update(b"cbdr-agent-v1 client");
        m.update(&[1u8; 32]);
        m.update(&[2u8; 32]);
        assert_eq!(
            key.client_mac(&[1u8; 32], &[2u8; 32]),
            m.finalize().into_bytes().to_vec()
        );
    }

    #[test]
    fn tokens_load_in_order_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.token");
        std::fs::write(&file, "  file-token-0123456789\n").unwrap();
        let cfg = AgentConfig {
            token_file: Some(file.clone()),
            token: Some("config-token-0123456789".into()),
            ..Default::default()
        };
        let env = Some("env-token-0123456789".to_string());
        let nonce = [7u8; 32];
        let mac_of = |t: &str| token(t).client_mac(&nonce, &nonce);
        let loaded = load_token_from(&cfg, env.clone()).unwrap().unwrap();
        assert_eq!(
            loaded.client_mac(&nonce, &nonce),
            mac_of("file-token-0123456789")
        );
        let cfg2 = AgentConfig {
            token: Some("config-token-0123456789".into()),
            ..Default::default()
        };
        let loaded = load_token_from(&cfg2, env.clone()).unwrap().unwrap();
        assert_eq!(
            loaded.client_mac(&nonce, &nonce),
            mac_of("config-token-0123456789")
        );
        let loaded = load_token_from(&AgentConfig::default(), env)
            .unwrap()
            .unwrap();
        assert_eq!(
            loaded.client_mac(&nonce, &nonce),
            mac_of("env-token-0123456789")
        );
        assert!(load_token_from(&AgentConfig::default(), None)
            .unwrap()
            .is_none());
        assert!(load_token_from(&AgentConfig::default(), Some(" \n".into()))
            .unwrap()
            .is_none());

        // Too short, and a missing file: clear errors that never show the token.
        let short = AgentConfig {
            token: Some("  short-secret  ".into()),
            ..Default::default()
        };
        let e = load_token_from(&short, None).unwrap_err().to_string();
        assert!(e.contains("too short") && e.contains("openssl rand"), "{e}");
        assert!(!e.contains("short-secret"), "{e}");
        let missing = AgentConfig {
            token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        let e = load_token_from(&missing, None).unwrap_err().to_string();
        assert!(e.contains("token_file") && e.contains("nope"), "{e}");
        assert_eq!(
            format!("{:?}", token("0123456789abcdef")),
            "Token(<redacted>)"
        );
    }

    #[test]
    fn nonces_and_names_parse() {
        assert!(parse_nonce(&hex::encode([1u8; 32])).is_some());
        assert!(parse_nonce(&hex::encode([1u8; 31])).is_none());
        assert!(parse_nonce("zz").is_none());
        assert!(matches!(
            server_name("agent1.example:7070").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(matches!(
            server_name("127.0.0.1:7070").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:7070").unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn tls_settings_that_do_not_go_together_are_refused() {
        let cfg = AgentConfig {
            tls_cert: Some("/x.pem".into()),
            ..Default::default()
        };
        assert!(server_tls(&cfg)
            .unwrap_err()
            .to_string()
            .contains("tls_key"));
        let cfg = AgentConfig {
            tls_client_ca: Some("/ca.pem".into()),
            ..Default::default()
        };
        assert!(server_tls(&cfg)
            .unwrap_err()
            .to_string()
            .contains("tls_cert"));
        let cfg = AgentConfig {
            tls_client_cert: Some("/c.pem".into()),
            ..Default::default()
        };
        assert!(client_tls(&cfg).unwrap_err().to_string().contains("tls_ca"));
        assert!(server_tls(&AgentConfig::default()).unwrap().is_none());
        assert!(client_tls(&AgentConfig::default()).unwrap().is_none());
        let cfg = AgentConfig {
            tls_ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client_tls(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("tls_ca") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}

//! `--web-config-file`: TLS and basic auth of /metrics, /healthz and /flows, in the
//! Prometheus exporter-toolkit format, read once at start:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.pem
//!   key_file: server.key
//!   client_ca_file: clients-ca.pem          # with a client_auth_type that verifies
//!   client_auth_type: RequireAndVerifyClientCert
//! basic_auth_users:
//!   prometheus: $2y$10$...                  # bcrypt hash
//! ```
//!
//! Relative paths are relative to the file's folder. Unknown keys are errors.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::http::HeaderValue;
use base64::Engine;
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

use crate::serve::tls;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    #[serde(default)]
    basic_auth_users: HashMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: PathBuf,
    key_file: PathBuf,
    client_ca_file: Option<PathBuf>,
    #[serde(default)]
    client_auth_type: ClientAuth,
}

/// exporter-toolkit's client_auth_type values that make sense here.
#[derive(Deserialize, Default, PartialEq, Eq)]
enum ClientAuth {
    #[default]
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

pub struct WebConfig {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub users: Option<Arc<BasicAuth>>,
}

impl WebConfig {
    /// Reads and checks the file and every file it names; an error says which and why.
    pub fn load(path: &Path) -> Result<WebConfig, String> {
        let at = |e: &dyn std::fmt::Display| format!("--web-config-file {}: {e}", path.display());
        let text = std::fs::read_to_string(path).map_err(|e| at(&e))?;
        let file: File = serde_saphyr::from_str(&text).map_err(|e| at(&e))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let tls = file
            .tls_server_config
            .map(|t| acceptor(&t, dir))
            .transpose()
            .map_err(|e| at(&e))?;
        for (user, hash) in &file.basic_auth_users {
            hash.parse::<bcrypt::HashParts>().map_err(|e| {
                at(&format!(
                    "basic_auth_users: {user}: not a bcrypt hash ({e})"
                ))
            })?;
        }
        let users = (!file.basic_auth_users.is_empty()).then(|| {
            Arc::new(BasicAuth {
                users: file.basic_auth_users,
                verified: Mutex::default(),
                hasher: std::collections::hash_map::RandomState::new(),
            })
        });
        Ok(WebConfig { tls, users })
    }
}

fn acceptor(t: &TlsFile, dir: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    let (certs, key) = (
        tls::certs(&dir.join(&t.cert_file))?,
        tls::key(&dir.join(&t.key_file))?,
    );
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match (&t.client_auth_type, &t.client_ca_file) {
        (ClientAuth::NoClientCert, None) => builder.with_no_client_auth(),
        // As exporter-toolkit: a CA that would verify nothing is a mistake.
        (ClientAuth::NoClientCert, Some(_)) => {
            return Err("tls_server_config: client_ca_file without a client_auth_type that verifies (VerifyClientCertIfGiven or RequireAndVerifyClientCert)".into());
        }
        (_, None) => {
            return Err("tls_server_config: this client_auth_type needs client_ca_file".into());
        }
        (how, Some(ca)) => {
            let roots = Arc::new(tls::roots(&dir.join(ca))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, tls::provider());
            let verifier = if *how == ClientAuth::VerifyClientCertIfGiven {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| e.to_string())?)
        }
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls_server_config: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The users and their bcrypt hashes. A bcrypt check costs tens of milliseconds, on
/// purpose: credentials that passed are remembered (as a keyed hash, not in clear), so
/// that a scrape every few seconds does not pay it each time.
pub struct BasicAuth {
    users: HashMap<String, String>,
    verified: Mutex<HashSet<u64>>,
    hasher: std::collections::hash_map::RandomState,
}

/// Credentials remembered at most; then forgotten all at once.
const REMEMBERED: usize = 64;

impl BasicAuth {
    /// Whether an `Authorization: Basic` header names a user with the right password.
    pub async fn allows(self: Arc<Self>, header: Option<&HeaderValue>) -> bool {
        let Some((user, password)) = header.and_then(credentials) else {
            return false;
        };
        let Some(hash) = self.users.get(&user).cloned() else {
            return false;
        };
        let key = self.hasher.hash_one((&user, &password, &hash));
        if self.verified.lock().unwrap().contains(&key) {
            return true;
        }
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        if ok {
            let mut v = self.verified.lock().unwrap();
            if v.len() >= REMEMBERED {
                v.clear();
            }
            v.insert(key);
        }
        ok
    }
}

/// (user, password) of a `Basic` authorization header.
fn credentials(h: &HeaderValue) -> Option<(String, String)> {
    let encoded = h.to_str().ok()?.strip_prefix("Basic ")?.trim();
    let raw = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let (user, password) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<WebConfig, String> {
        let dir = std::env::temp_dir().join(format!("ackwatch-webcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("web.yml");
        std::fs::write(&f, yaml).unwrap();
        let r = WebConfig::load(&f);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn bad_files_are_named_with_the_reason() {
        let e = load("basic_auth_users:\n  alice: plain\n").err().unwrap();
        assert!(e.contains("alice: not a bcrypt hash"), "{e}");
        let e = load("tls_server_config:\n  cert_file: nosuch.pem\n  key_file: k\n")
            .err()
            .unwrap();
        assert!(e.contains("nosuch.pem"), "{e}");
        let e = load("tls_server_config:\n  cert_file: c\n  key_file: k\n  client_auth_type: RequestClientCert\n")
            .err()
            .unwrap();
        assert!(e.contains("unknown variant `RequestClientCert`"), "{e}");
        let e = load("basic_auth: {}\n").err().unwrap();
        assert!(e.contains("unknown field"), "{e}");
        assert!(load("").is_ok_and(|w| w.tls.is_none() && w.users.is_none()));
    }

    #[tokio::test]
    async fn basic_auth_checks_the_bcrypt_hash() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let w = load(&format!("basic_auth_users:\n  alice: '{hash}'\n")).unwrap();
        let users = w.users.unwrap();
        let header = |u: &str, p: &str| {
            let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
            HeaderValue::from_str(&format!("Basic {b}")).unwrap()
        };
        for _ in 0..2 {
            assert!(users.clone().allows(Some(&header("alice", "s3cret"))).await);
        }
        assert!(!users.clone().allows(Some(&header("alice", "wrong"))).await);
        assert!(!users.clone().allows(Some(&header("bob", "s3cret"))).await);
        assert!(!users.clone().allows(None).await);
    }
}

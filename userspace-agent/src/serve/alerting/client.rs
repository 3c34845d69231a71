//! The HTTP client of the pushes (reqwest over rustls): the Alertmanagers' CA, a client
//! certificate (mTLS), basic auth or a bearer token, from files read at start. Each
//! failure is classified by its reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;

use crate::serve::tls;

/// How long one push may take, connecting included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The Alertmanager flags of `ackwatch run`.
#[derive(Args, Clone)]
pub struct AlertmanagerArgs {
    /// Alertmanager to push stalls to, e.g. https://am1:9093: repeatable or
    /// comma-separated, every replica of a cluster (each gets every alert).
    #[arg(
        long = "alertmanager-url",
        env = "ACKWATCH_ALERTMANAGER_URL",
        value_delimiter = ','
    )]
    pub urls: Vec<Endpoint>,
    /// Push a stall once it has lasted this long, from its hole's first duplicate ACK
    /// (events and metrics report it at T): a healthy sender whose retransmissions are
    /// lost for a while recovers before, a cTCP stall never does.
    #[arg(long, default_value = "10s", value_parser = crate::cli::duration, env = "ACKWATCH_ALERT_AFTER")]
    pub alert_after: Duration,
    /// CA certificates (PEM) that sign the Alertmanagers' certificates (default: the
    /// system's).
    #[arg(long = "alertmanager-ca-file")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with --alertmanager-key-file.
    #[arg(long = "alertmanager-cert-file", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(long = "alertmanager-key-file", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
    /// Basic auth user, with --alertmanager-basic-auth-password-file.
    #[arg(long = "alertmanager-basic-auth-user", requires = "password_file")]
    pub basic_auth_user: Option<String>,
    /// File holding the basic auth password (a trailing newline is ignored).
    #[arg(
        long = "alertmanager-basic-auth-password-file",
        requires = "basic_auth_user"
    )]
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token (a trailing newline is ignored).
    #[arg(
        long = "alertmanager-bearer-token-file",
        conflicts_with = "basic_auth_user"
    )]
    pub bearer_token_file: Option<PathBuf>,
}

/// An Alertmanager's base URL (`http://` or `https://`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(reqwest::Url);

impl std::str::FromStr for Endpoint {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, String> {
        let u = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") || u.host_str().is_none_or(str::is_empty) {
            return Err(format!("{url}: an http:// or https:// URL with a host"));
        }
        Ok(Endpoint(u))
    }
}

impl Endpoint {
    /// Its v2 alerts API.
    fn alerts(&self) -> reqwest::Url {
        let mut u = self.0.clone();
        u.set_path(&format!("{}/api/v2/alerts", u.path().trim_end_matches('/')));
        u
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a push failed: the `reason` label of `ackwatch_alertmanager_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Connect,
    Tls,
    Auth,
    HttpStatus,
    Timeout,
}

pub const REASONS: [&str; 5] = ["connect", "tls", "auth", "http_status", "timeout"];

impl Reason {
    pub fn label(self) -> &'static str {
        REASONS[self as usize]
    }
}

pub struct Failure {
    pub reason: Reason,
    pub detail: String,
}

enum Auth {
    None,
    Basic { user: String, password: String },
    Bearer(String),
}

pub struct Client {
    http: reqwest::Client,
    auth: Auth,
}

impl Client {
    /// Reads the flags' files; an error names the file and what is wrong with it.
    pub fn new(a: &AlertmanagerArgs) -> Result<Client, String> {
        let roots = match &a.ca_file {
            Some(f) => tls::roots(f)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
                roots
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let config = match (&a.cert_file, &a.key_file) {
            (Some(cert), Some(key)) => config
                .with_client_auth_cert(tls::certs(cert)?, tls::key(key)?)
                .map_err(|e| format!("{}: {e}", cert.display()))?,
            _ => config.with_no_client_auth(),
        };
        // Like Prometheus, no proxy from the environment: Alertmanager is reached as
        // the URL says.
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| format!("Alertmanager client: {e}"))?;
        let auth = match (&a.basic_auth_user, &a.password_file, &a.bearer_token_file) {
            (Some(user), Some(file), _) => Auth::Basic {
                user: user.clone(),
                password: secret(file)?,
            },
            (_, _, Some(file)) => Auth::Bearer(secret(file)?),
            _ => Auth::None,
        };
        Ok(Client { http, auth })
    }

    /// POSTs `body` (a JSON array of alerts) to `ep`'s alerts API once.
    pub async fn post(&self, ep: &Endpoint, body: String) -> Result<(), Failure> {
        let req = self
            .http
            .post(ep.alerts())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        };
        let resp = req.send().await.map_err(|e| Failure {
            reason: classify(&e),
            detail: chain(&e),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let reason = match status.as_u16() {
            401 | 403 => Reason::Auth,
            _ => Reason::HttpStatus,
        };
        Err(Failure {
            reason,
            detail: format!("answered {status}"),
        })
    }
}

/// A secret file's content, less its trailing newline.
fn secret(path: &Path) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(s.trim_end_matches(['\r', '\n']).to_string())
}

/// A TLS failure shows as a connect error whose cause is rustls's, in the I/O error
/// of the handshake (itself wrapped in another I/O error).
fn classify(e: &reqwest::Error) -> Reason {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if is_tls(s) {
            return Reason::Tls;
        }
        source = s.source();
    }
    if e.is_timeout() {
        Reason::Timeout
    } else {
        Reason::Connect
    }
}

fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    match e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// The error and its causes, for the log line.
fn chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        out = format!("{out}: {s}");
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_from_urls() {
        let e: Endpoint = "http://127.0.0.1:9093".parse().unwrap();
        assert_eq!(e.alerts().as_str(), "http://127.0.0.1:9093/api/v2/alerts");
        let e: Endpoint = "https://am.example/prefix/".parse().unwrap();
        assert_eq!(
            e.alerts().as_str(),
            "https://am.example/prefix/api/v2/alerts"
        );
        assert!("ftp://am:9093".parse::<Endpoint>().is_err());
        assert!("am:9093".parse::<Endpoint>().is_err());
        assert!("http://".parse::<Endpoint>().is_err());
    }

    fn args(url: &str) -> AlertmanagerArgs {
        AlertmanagerArgs {
            urls: vec![url.parse().unwrap()],
            alert_after: Duration::from_secs(1),
            ca_file: None,
            cert_file: None,
            key_file: None,
            basic_auth_user: None,
            password_file: None,
            bearer_token_file: None,
        }
    }

    /// A one-request server on loopback that answers `status` (or nothing, when
    /// `None`); the request it read comes back through the handle.
    async fn server(status: Option<&'static str>) -> (String, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let n = c.read(&mut buf).await.unwrap();
            match status {
                Some(s) => {
                    let resp = format!("HTTP/1.1 {s}\r\nContent-Length: 0\r\n\r\n");
                    c.write_all(resp.as_bytes()).await.unwrap();
                }
                None => tokio::time::sleep(TIMEOUT * 2).await,
            }
            String::from_utf8_lossy(&buf[..n]).to_lowercase()
        });
        (url, task)
    }

    async fn push(a: &AlertmanagerArgs) -> Result<(), Reason> {
        let c = Client::new(a).unwrap();
        c.post(&a.urls[0], "[]".into()).await.map_err(|f| f.reason)
    }

    #[tokio::test]
    async fn each_failure_has_its_reason() {
        for (status, want) in [
            ("200 OK", Ok(())),
            ("401 Unauthorized", Err(Reason::Auth)),
            ("403 Forbidden", Err(Reason::Auth)),
            ("500 Internal Server Error", Err(Reason::HttpStatus)),
        ] {
            let (url, _server) = server(Some(status)).await;
            assert_eq!(push(&args(&url)).await, want, "{status}");
        }
        // A port just closed: refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let refused = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        assert_eq!(push(&args(&refused)).await, Err(Reason::Connect));
        let (url, _server) = server(None).await;
        assert_eq!(push(&args(&url)).await, Err(Reason::Timeout));
    }

    #[tokio::test]
    async fn basic_auth_and_bearer_token_from_files() {
        let dir = std::env::temp_dir().join(format!("ackwatch-client-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (pw, token) = (dir.join("password"), dir.join("token"));
        std::fs::write(&pw, "s3cret\n").unwrap();
        std::fs::write(&token, "t0ken\n").unwrap();

        let (url, seen) = server(Some("200 OK")).await;
        let mut a = args(&url);
        a.basic_auth_user = Some("ackwatch".into());
        a.password_file = Some(pw);
        assert_eq!(push(&a).await, Ok(()));
        // base64("ackwatch:s3cret")
        assert!(
            seen.await
                .unwrap()
                .contains("authorization: basic ywnrd2f0y2g6cznjcmv0")
        );

        let (url, seen) = server(Some("200 OK")).await;
        let mut a = args(&url);
        a.bearer_token_file = Some(token);
        assert_eq!(push(&a).await, Ok(()));
        let request = seen.await.unwrap();
        assert!(request.contains("authorization: bearer t0ken"), "{request}");
        assert!(request.starts_with("post /api/v2/alerts "), "{request}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reasons_are_labelled() {
        for (r, l) in [
            (Reason::Connect, "connect"),
            (Reason::Tls, "tls"),
            (Reason::Auth, "auth"),
            (Reason::HttpStatus, "http_status"),
            (Reason::Timeout, "timeout"),
        ] {
            assert_eq!(r.label(), l);
        }
    }
}

//! TLS pieces of the tests: a throwaway PKI made with the openssl CLI (a CA, a server
//! certificate for 127.0.0.1, a client certificate, and a second CA that signed
//! nothing), bcrypt hashes, and curl for HTTPS requests from a lab namespace.

use std::path::PathBuf;
use std::process::Command;

use crate::Scratch;

pub struct Pki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed none of these.
    pub other_ca: PathBuf,
}

fn openssl(dir: &Scratch, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(&dir.0)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new P-256 key `name`.key and, for subject `subj`, a request `out` (or with
/// `-x509` in `extra`, a self-signed certificate).
fn new_key(dir: &Scratch, name: &str, out: &str, subj: &str, extra: &[&str]) {
    let key = format!("{name}.key");
    let args = [
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-out",
        out,
        "-subj",
        subj,
    ];
    openssl(dir, &[&args[..], extra].concat());
}

/// A P-256 CA `name` (name.pem, name.key), valid for a day.
fn ca(dir: &Scratch, name: &str) {
    let subj = format!("/CN=ackwatch test {name}");
    new_key(
        dir,
        name,
        &format!("{name}.pem"),
        &subj,
        &["-x509", "-days", "1"],
    );
}

/// A certificate `name` signed by CA `ca`, with the extensions `ext` (openssl's
/// extfile syntax).
fn leaf(dir: &Scratch, ca: &str, name: &str, ext: &str) {
    let (csr, pem, extfile) = (
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.ext"),
    );
    std::fs::write(dir.join(&extfile), ext).unwrap();
    new_key(dir, name, &csr, &format!("/CN={name}"), &[]);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "1",
            "-extfile",
            &extfile,
        ],
    );
}

impl Pki {
    pub fn new(dir: &Scratch) -> Pki {
        ca(dir, "ca");
        ca(dir, "other-ca");
        leaf(
            dir,
            "ca",
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        leaf(dir, "ca", "client", "extendedKeyUsage=clientAuth\n");
        Pki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
            other_ca: dir.join("other-ca.pem"),
        }
    }
}

/// A bcrypt hash of `password` (cost 4: tests need no strength).
pub fn bcrypt_hash(password: &str) -> String {
    bcrypt::hash(password, 4).expect("bcrypt")
}

/// `curl` in namespace `ns` with `args` (URL included): the HTTP status (0 when no
/// answer came, as when the TLS handshake fails) and the body.
pub fn curl(ns: &str, args: &[&str]) -> (u16, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "curl", "-sS", "--max-time", "10"])
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

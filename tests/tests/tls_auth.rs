//! TLS and auth, against the real Alertmanager and Prometheus: the agent pushes over
//! mutual TLS with basic auth; a wrong password and an unknown CA fail as one log line
//! and a count by reason, with nothing else disturbed; Prometheus scrapes the agent
//! over TLS with basic auth (`--web-config-file`); bad files are exit 2 with the reason.

use std::process::Command;
use std::time::{Duration, Instant};

use ackwatch_tests::Scratch;
use ackwatch_tests::alerting::{Replica, STORE_ONLY, alertmanager_flags, prometheus};
use ackwatch_tests::lab::CLIENT4;
use ackwatch_tests::live::{AGENT_ADDR, Agent, http_get, poll_json};
use ackwatch_tests::observe::metric;
use ackwatch_tests::stall_lab::{ISN, ctcp_from, lab_with_loss};
use ackwatch_tests::tls_lab::{Pki, bcrypt_hash, curl};

/// A web config (exporter-toolkit format) with TLS from `pki`, client certificates
/// verified by `client_auth_type`, and one user.
fn web_config(pki: &Pki, client_auth_type: &str, user: &str, password: &str) -> String {
    format!(
        "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n  client_auth_type: {client_auth_type}\nbasic_auth_users:\n  {user}: '{}'\n",
        pki.server_cert.display(),
        pki.server_key.display(),
        pki.ca.display(),
        bcrypt_hash(password)
    )
}

/// An agent pushing to https://127.0.0.1:9093 with `tls` and `auth` flags.
fn agent_pushing(ns: &str, extra: &[&str]) -> Agent {
    let base = [
        "--iface",
        "h0",
        "--listen",
        AGENT_ADDR,
        "--alert-after",
        "1s",
        "--alertmanager-url",
        "https://127.0.0.1:9093",
    ];
    Agent::start(ns, &[&base[..], extra].concat())
}

/// Waits up to 10 s for the agent's `ackwatch_alertmanager_errors_total{reason}`.
fn errors(ns: &str, reason: &str) -> f64 {
    let (deadline, name) = (
        Instant::now() + Duration::from_secs(10),
        format!("ackwatch_alertmanager_errors_total{{reason=\"{reason}\"}}"),
    );
    loop {
        let (_, text) = http_get(ns, AGENT_ADDR, "/metrics");
        let n = metric(&text, &name).unwrap_or(0.0);
        if n > 0.0 || Instant::now() > deadline {
            return n;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn pushes_over_mutual_tls_with_basic_auth_and_failures_by_reason() {
    let (lab, _headend) = lab_with_loss();
    let dir = Scratch::new("am-tls");
    let pki = Pki::new(&dir);
    std::fs::write(
        dir.join("web.yml"),
        web_config(&pki, "RequireAndVerifyClientCert", "ackwatch", "s3cret"),
    )
    .unwrap();
    std::fs::write(dir.join("password"), "s3cret\n").unwrap();
    std::fs::write(dir.join("wrong"), "guess\n").unwrap();
    let am = Replica {
        web: "127.0.0.1:9093".into(),
        cluster: None,
    };
    let web_flag = format!("--web.config.file={}", dir.join("web.yml").display());
    let _am = alertmanager_flags(&lab.headend, &dir, &am, &[], STORE_ONLY, &[web_flag]);
    let p = |f: &std::path::Path| f.display().to_string();
    let (ca, cert, key, other_ca) = (
        p(&pki.ca),
        p(&pki.client_cert),
        p(&pki.client_key),
        p(&pki.other_ca),
    );
    let (password, wrong) = (p(&dir.join("password")), p(&dir.join("wrong")));
    let tls = |ca: &str| {
        vec![
            "--alertmanager-ca-file".to_string(),
            ca.to_string(),
            "--alertmanager-cert-file".into(),
            cert.clone(),
            "--alertmanager-key-file".into(),
            key.clone(),
            "--alertmanager-basic-auth-user".into(),
            "ackwatch".into(),
        ]
    };
    let run = |args: Vec<String>, port: u16| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let agent = agent_pushing(&lab.headend, &args);
        ctcp_from(&lab, port, ISN, 0);
        let e = agent
            .next_event(Duration::from_secs(4))
            .expect("stall_started");
        assert_eq!(e["event"], "stall_started", "{e}");
        agent
    };

    // Right CA, client certificate and password: the alert is in Alertmanager.
    let agent = run(
        [
            tls(&ca),
            vec![
                "--alertmanager-basic-auth-password-file".into(),
                password.clone(),
            ],
        ]
        .concat(),
        50_330,
    );
    let client = format!("{CLIENT4}:50330");
    let deadline = Instant::now() + Duration::from_secs(10);
    let auth = [
        "--cacert",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
        "-u",
        "ackwatch:s3cret",
    ];
    loop {
        let (status, body) = curl(
            &lab.headend,
            &[&auth[..], &["https://127.0.0.1:9093/api/v2/alerts"]].concat(),
        );
        if status == 200 && body.contains(&client) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no alert in Alertmanager: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(agent);

    // A wrong password, then a CA that did not sign Alertmanager's certificate: each
    // one log line and a count by reason; the events go on.
    for (args, port, reason) in [
        (
            [
                tls(&ca),
                vec![
                    "--alertmanager-basic-auth-password-file".into(),
                    wrong.clone(),
                ],
            ]
            .concat(),
            50_331,
            "auth",
        ),
        (
            [
                tls(&other_ca),
                vec![
                    "--alertmanager-basic-auth-password-file".into(),
                    password.clone(),
                ],
            ]
            .concat(),
            50_332,
            "tls",
        ),
    ] {
        let agent = run(args, port);
        assert_eq!(errors(&lab.headend, reason), 1.0, "{reason}");
        let logs = agent.logs.lock().unwrap().clone();
        let lines: Vec<_> = logs
            .iter()
            .filter(|l| l.contains("Alertmanager https://"))
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains(&format!("({reason};")), "{lines:?}");
        let (status, _) = http_get(&lab.headend, AGENT_ADDR, "/healthz");
        assert_eq!(status, 200);
    }
}

#[test]
fn prometheus_scrapes_the_agent_over_tls_with_basic_auth() {
    let (lab, _headend) = lab_with_loss();
    let dir = Scratch::new("agent-tls");
    let pki = Pki::new(&dir);
    let web = dir.join("web.yml");
    std::fs::write(
        &web,
        web_config(&pki, "VerifyClientCertIfGiven", "prometheus", "s3cret"),
    )
    .unwrap();
    std::fs::write(dir.join("password"), "s3cret").unwrap();
    let agent = Agent::on_headend(&lab, &["--web-config-file", &web.display().to_string()]);
    let ca = pki.ca.display().to_string();
    let url = format!("https://{AGENT_ADDR}/metrics");
    let (status, _) = curl(&lab.headend, &["--cacert", &ca, &url]);
    assert_eq!(status, 401, "unauthenticated");
    let (status, _) = curl(
        &lab.headend,
        &["--cacert", &ca, "-u", "prometheus:guess", &url],
    );
    assert_eq!(status, 401, "wrong password");
    let (status, body) = curl(
        &lab.headend,
        &["--cacert", &ca, "-u", "prometheus:s3cret", &url],
    );
    assert_eq!(status, 200);
    assert!(body.contains("ackwatch_build_info"), "{body}");
    let (status, _) = curl(
        &lab.headend,
        &[
            "--cacert",
            &pki.other_ca.display().to_string(),
            "-u",
            "prometheus:s3cret",
            &url,
        ],
    );
    assert_eq!(
        status, 0,
        "a server certificate from an unknown CA is refused"
    );

    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: ackwatch\n    scheme: https\n    tls_config:\n      ca_file: {ca}\n      cert_file: {}\n      key_file: {}\n    basic_auth:\n      username: prometheus\n      password_file: {}\n    static_configs:\n      - targets: ['{AGENT_ADDR}']\n",
        pki.client_cert.display(),
        pki.client_key.display(),
        dir.join("password").display()
    );
    let _prom = prometheus(&lab.headend, &dir, &config);
    let q = poll_json(
        &lab.headend,
        "127.0.0.1:9090",
        "/api/v1/query?query=up%7Bjob%3D%22ackwatch%22%7D",
        Duration::from_secs(15),
        |v| v["data"]["result"][0]["value"][1] == "1",
    );
    assert_eq!(q["data"]["result"][0]["value"][1], "1", "Prometheus: {q}");
    assert_eq!(agent.stop(), Some(0));
}

#[test]
fn bad_tls_and_auth_files_are_exit_2_with_the_reason() {
    let dir = Scratch::new("bad-web-config");
    let file = |name: &str, text: &str| {
        let f = dir.join(name);
        std::fs::write(&f, text).unwrap();
        f.display().to_string()
    };
    let no_cert = file(
        "no-cert.yml",
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: missing.key\n",
    );
    let plain = file("plain.yml", "basic_auth_users:\n  alice: s3cret\n");
    let typo = file("typo.yml", "tls_config:\n  cert_file: x\n");
    let missing_ca = dir.join("missing-ca.pem").display().to_string();
    for (args, says) in [
        (vec!["--web-config-file", &no_cert], "missing.pem"),
        (
            vec!["--web-config-file", &plain],
            "alice: not a bcrypt hash",
        ),
        (
            vec!["--web-config-file", &typo],
            "unknown field `tls_config`",
        ),
        (
            vec![
                "--alertmanager-url",
                "https://127.0.0.1:9093",
                "--alertmanager-ca-file",
                &missing_ca,
            ],
            "missing-ca.pem",
        ),
    ] {
        let out = Command::new(ackwatch_tests::ackwatch_binary())
            .args(["run", "--iface", "lo"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

//! The TCP listener: TLS always, and an API token on every request.

use vireo_testkit::{DaemonOptions, TestDaemon};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn tcp_listener_requires_tls_and_a_valid_token() {
    let port = free_port();
    let d = TestDaemon::start_with(DaemonOptions {
        listen: Some(format!("127.0.0.1:{port}")),
        ..Default::default()
    })
    .unwrap();
    let cert = d.state_dir().join("tls").join("cert.pem");
    assert!(cert.exists(), "self-signed certificate not generated");
    let created = d.json(&["token", "create", "laptop"]);
    let secret = created["secret"].as_str().unwrap().to_string();
    let remote = format!("https://127.0.0.1:{port}");
    let cert_s = cert.to_string_lossy().into_owned();

    let run = |token: Option<&str>| {
        let mut cmd = std::process::Command::new(vireo_testkit::binary("vireo"));
        cmd.args([
            "--remote", &remote, "--tls-ca", &cert_s, "--output", "json", "host", "show",
        ]);
        cmd.env_remove("VIREO_SOCKET").env_remove("VIREO_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        cmd.output().unwrap()
    };
    let ok = run(Some(&secret));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let host: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(host["node"], "test-node");

    let none = run(None);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    let wrong = run(Some("vireo_0000"));
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("not valid"),
        "{}",
        String::from_utf8_lossy(&wrong.stderr)
    );

    // Tokens are stored hashed: the secret does not appear in the state directory's database.
    let db = std::fs::read(d.state_dir().join("state.db")).unwrap();
    assert!(!db.windows(secret.len()).any(|w| w == secret.as_bytes()));

    // Revoked tokens stop working.
    d.ok(&["token", "revoke", "laptop"]);
    assert!(!run(Some(&secret)).status.success());

    // Plain HTTP on the TLS port is refused.
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(15)))
        .unwrap();
    let _ = s.write_all(b"GET /v1/host HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("\"node\""));
}

//! Bad and hostile requests get a clear 4xx and change nothing (on disk or in the store).

use vireo_testkit::TestDaemon;

/// Everything observable that a request could change.
fn snapshot(d: &TestDaemon) -> (String, Vec<String>) {
    let (_, vms) = d.http("GET", "/v1/vms", None);
    let mut dirs: Vec<String> = std::fs::read_dir(d.state_dir().join("vms"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    (vms, dirs)
}

#[test]
fn hostile_requests_are_rejected_and_change_nothing() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    d.ok(&["vm", "create", "existing", "--image", "tiny", "--wait"]);
    let long = "a".repeat(300);
    let long_body = format!(r#"{{"name":"{long}","image":"tiny"}}"#);
    let cases: Vec<(&str, &str, Option<&str>, u16, &str)> = vec![
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"../x","image":"tiny"}"#),
            400,
            "must start with a lowercase letter",
        ),
        ("POST", "/v1/vms", Some(&long_body), 400, "limit is 63"),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"a/b","image":"tiny"}"#),
            400,
            "may only contain",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","vcpus":0}"#),
            400,
            "vcpus must be between",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","vcpus":-1}"#),
            400,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","vcpus":100000}"#),
            400,
            "vcpus must be between",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","memory_mib":0}"#),
            400,
            "memory_mib must be between",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","memory_mib":99999999999}"#),
            400,
            "memory_mib",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","bogus":1}"#),
            400,
            "unknown field",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"nope"}"#),
            400,
            "image \"nope\" not found",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"existing","image":"tiny"}"#),
            409,
            "already exists",
        ),
        (
            "POST",
            "/v1/vms",
            Some(r#"{"name":"v","image":"tiny","kernel_args":"a\nb"}"#),
            400,
            "kernel command line",
        ),
        ("POST", "/v1/vms", Some("{not json"), 400, "malformed JSON"),
        (
            "POST",
            "/v1/vms?project=nope",
            Some(r#"{"name":"v","image":"tiny"}"#),
            404,
            "project \"nope\" not found",
        ),
        (
            "POST",
            "/v1/vms?project=../etc",
            Some(r#"{"name":"v","image":"tiny"}"#),
            400,
            "invalid query string",
        ),
        ("GET", "/v1/vms/..%2Fetc", None, 400, "invalid VM name"),
        ("GET", "/v1/vms/missing", None, 404, "not found"),
        (
            "POST",
            "/v1/vms/existing/pause",
            None,
            409,
            "cannot pause a VM that is stopped",
        ),
        (
            "POST",
            "/v1/vms/existing/resume",
            None,
            409,
            "cannot resume a VM that is stopped",
        ),
        (
            "POST",
            "/v1/vms/existing/stop",
            Some(r#"{"timeout_s":0}"#),
            400,
            "timeout_s",
        ),
        (
            "POST",
            "/v1/vms/existing/stop",
            Some(r#"{"force":"yes"}"#),
            400,
            "invalid request body",
        ),
        (
            "POST",
            "/v1/vms/existing/exec",
            Some(r#"{"command":[]}"#),
            400,
            "command must name a program",
        ),
        (
            "POST",
            "/v1/vms/existing/exec",
            Some(r#"{"command":["true"]}"#),
            409,
            "exec needs a running VM",
        ),
        (
            "PATCH",
            "/v1/vms/existing",
            Some(r#"{"vcpus":0}"#),
            400,
            "vcpus",
        ),
        (
            "GET",
            "/v1/operations/not-a-uuid",
            None,
            400,
            "not an operation id",
        ),
        (
            "POST",
            "/v1/images/build",
            Some(r#"{"builder":"windows"}"#),
            400,
            "unknown image builder",
        ),
        (
            "POST",
            "/v1/images/build",
            Some(r#"{"builder":"tiny"}"#),
            409,
            "already exists",
        ),
        ("DELETE", "/v1/images/tiny", None, 409, "used by VMs"),
        (
            "DELETE",
            "/v1/projects/default",
            None,
            409,
            "cannot be deleted",
        ),
        (
            "POST",
            "/v1/tokens",
            Some(r#"{"name":"../root"}"#),
            400,
            "must start",
        ),
        ("GET", "/v1/nothing-here", None, 404, "no such endpoint"),
    ];
    for (method, path, body, want_status, want_msg) in cases {
        let before = snapshot(&d);
        let (status, resp) = d.http(method, path, body);
        assert_eq!(
            status, want_status,
            "{method} {path} {body:?} -> {status} {resp}"
        );
        let v: serde_json::Value = serde_json::from_str(&resp)
            .unwrap_or_else(|e| panic!("{method} {path}: error body is not JSON ({e}): {resp}"));
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(want_msg),
            "{method} {path}: message {msg:?} should contain {want_msg:?}"
        );
        assert!(v["error"]["code"].is_string());
        assert_eq!(snapshot(&d), before, "{method} {path} changed state");
    }
}

#[test]
fn missing_kernel_file_is_a_clear_error() {
    let d = TestDaemon::start().unwrap();
    d.ensure_tiny();
    let img = d.json(&["image", "show", "tiny"]);
    assert_eq!(img["name"], "tiny");
    // Move the image's kernel away behind the daemon's back.
    let images = d.state_dir().join("images");
    let dir = std::fs::read_dir(&images)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    let kernel = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().contains("vmlinuz"))
        .unwrap();
    let aside = dir.join("moved-away");
    std::fs::rename(&kernel, &aside).unwrap();
    let (status, body) = d.http(
        "POST",
        "/v1/vms",
        Some(r#"{"name":"k1","image":"tiny","start":true}"#),
    );
    std::fs::rename(&aside, &kernel).unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("missing its file"), "{body}");
    assert!(std::fs::read_dir(d.state_dir().join("vms"))
        .unwrap()
        .next()
        .is_none());
}

//! Host, metrics, OpenAPI, projects and the accelerator probe through the real daemon.

use std::time::Duration;

use vireo_testkit::{DaemonOptions, TestDaemon};

#[test]
fn metrics_openapi_and_projects() {
    let d = TestDaemon::start().unwrap();
    let (status, body) = d.http("GET", "/v1/openapi.json", None);
    assert_eq!(status, 200);
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["paths"]["/v1/vms"].is_object());

    d.ok(&["project", "create", "team-a"]);
    let projects = d.json(&["project", "list"]);
    let names: Vec<&str> = projects
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["default", "team-a"]);
    let vms = d.json(&["--project", "team-a", "vm", "list"]);
    assert_eq!(vms, serde_json::json!([]));
    assert!(!d.cli(&["--project", "nope", "vm", "list"]).status.success());
    d.ok(&["project", "delete", "team-a"]);

    let (status, metrics) = d.http("GET", "/metrics", None);
    assert_eq!(status, 200);
    assert!(metrics.contains("vireo_http_requests_total"), "{metrics}");
    assert!(
        metrics.contains("vireo_vms{state=\"with_process\"} 0"),
        "{metrics}"
    );
    assert!(metrics.trim_end().ends_with("# EOF"));

    let host = d.json(&["host", "show"]);
    assert_eq!(host["node"], "test-node");
    assert_eq!(host["accel"]["configured"], "tcg");
    assert!(host["memory_total_mib"].as_u64().unwrap() > 0);
}

/// `accel = "auto"` boots a probe guest under KVM; where `/dev/kvm` cannot run guests (as on
/// the paravirtual KVM of the CI machines) the daemon reports TCG with the reason.
#[test]
fn real_accel_probe_decides_and_reports() {
    let d = TestDaemon::start_with(DaemonOptions {
        accel: "auto".into(),
        ..Default::default()
    })
    .unwrap();
    d.ensure_tiny();
    d.ok(&[
        "vm",
        "create",
        "probe",
        "--image",
        "tiny",
        "--start",
        "--wait",
        "--timeout",
        "240",
    ]);
    let host = d.json(&["host", "show"]);
    let accel = &host["accel"];
    assert_eq!(accel["configured"], "auto");
    let chosen = accel["chosen"].as_str().unwrap();
    assert!(chosen == "kvm" || chosen == "tcg");
    assert_eq!(
        accel["kvm_boots_guest"].as_bool().unwrap(),
        chosen == "kvm",
        "{accel}"
    );
    assert_eq!(
        accel["kvm_device_present"].as_bool().unwrap(),
        std::path::Path::new("/dev/kvm").exists()
    );
    assert!(!accel["detail"].as_str().unwrap().is_empty());
    let vm = d.wait_vm("probe", Duration::from_secs(5), |v| v["state"] == "running");
    assert_eq!(vm["accel"], chosen);
    d.ok(&["vm", "kill", "probe"]);
}

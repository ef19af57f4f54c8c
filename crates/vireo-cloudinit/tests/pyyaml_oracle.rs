//! Generated YAML means the same to PyYAML (the YAML 1.1 parser cloud-init uses; Debian's
//! python3-yaml from `common::python_oracle_path`) as to us:
//! thousands of arbitrary strings written with `yaml::quote` read back unchanged, including
//! the ones YAML 1.1 would otherwise turn into booleans, numbers, nulls or dates.

mod common;

use std::process::{Command, Stdio};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, TestRunner};
use vireo_cloudinit::yaml::quote;

const SCRIPT: &str = r#"
import json, sys, yaml
doc, want = sys.stdin.read().split("\n#---json---\n")
got = yaml.safe_load(doc)
want = json.loads(want)
bad = [(w, g) for w, g in zip(want, got) if w != g]
print(json.dumps({"count": len(got), "mismatches": bad[:5]}))
"#;

#[test]
fn pyyaml_reads_quoted_strings_back_unchanged() {
    let mut samples: Vec<String> = [
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "~",
        "null",
        "",
        "0644",
        "0o17",
        "0x1f",
        "1e3",
        "1_000",
        ".inf",
        "-.NaN",
        "2001-12-14",
        "12:30:45",
        "=",
        "<<",
        "- a",
        "a: b",
        "#c",
        "'",
        "\"",
        "\\",
        "\u{85}",
        "\u{a0}",
        "\u{2028}",
        "\u{feff}x",
        "\u{fffd}",
        "😀",
        "tab\there",
        "cr\rlf\r\n",
        " lead",
        "trail ",
        "\u{0}\u{1}\u{7f}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut runner = TestRunner::new(Config::default());
    let strategy = proptest::string::string_regex("(.|\\n){0,40}").unwrap();
    for _ in 0..3000 {
        samples.push(strategy.new_tree(&mut runner).unwrap().current());
    }
    let any = proptest::arbitrary::any::<String>();
    for _ in 0..1000 {
        samples.push(any.new_tree(&mut runner).unwrap().current());
    }

    let mut input = String::new();
    for s in &samples {
        input.push_str(&format!("- {}\n", quote(s)));
    }
    input.push_str("\n#---json---\n");
    input.push_str(&serde_json::to_string(&samples).unwrap());

    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .env("PYTHONPATH", common::python_oracle_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["count"], samples.len());
    assert_eq!(report["mismatches"], serde_json::json!([]), "{report}");
}

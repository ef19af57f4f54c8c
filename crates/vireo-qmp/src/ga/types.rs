//! Request and reply types of the guest-agent commands Vireo uses, and their wire encodings
//! (pure functions, unit-tested).
//!
//! Invariant: captured output is decoded from base64 here, once; invalid base64 is an error
//! naming the field, never silently dropped.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::GuestAgentError;

/// `guest-info` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    pub version: String,
    #[serde(rename = "supported_commands", default)]
    pub supported_commands: Vec<GuestCommandInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestCommandInfo {
    pub name: String,
    pub enabled: bool,
    #[serde(rename = "success-response", default)]
    pub success_response: bool,
}

/// `guest-get-osinfo` reply; every field is optional in the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    pub id: Option<String>,
    pub name: Option<String>,
    pub pretty_name: Option<String>,
    pub version: Option<String>,
    pub version_id: Option<String>,
    pub variant: Option<String>,
    pub variant_id: Option<String>,
    pub kernel_release: Option<String>,
    pub kernel_version: Option<String>,
    pub machine: Option<String>,
}

/// One entry of `guest-network-get-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestNetworkInterface {
    pub name: String,
    #[serde(default)]
    pub hardware_address: Option<String>,
    #[serde(default)]
    pub ip_addresses: Vec<GuestIpAddress>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestIpAddress {
    pub ip_address_type: GuestIpAddressType,
    pub ip_address: String,
    pub prefix: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestIpAddressType {
    Ipv4,
    Ipv6,
}

/// `guest-shutdown` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownMode {
    Powerdown,
    Reboot,
    Halt,
}

impl ShutdownMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Powerdown => "powerdown",
            ShutdownMode::Reboot => "reboot",
            ShutdownMode::Halt => "halt",
        }
    }
}

/// Arguments of `guest-exec`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// Program path inside the guest.
    pub path: String,
    pub args: Vec<String>,
    /// `NAME=value` entries; when non-empty they replace the agent's environment.
    pub env: Vec<String>,
    /// Bytes fed to the process' stdin (then closed).
    pub input: Option<Vec<u8>>,
    /// Collect stdout/stderr for [`GuestAgent::exec_status`](super::GuestAgent::exec_status).
    pub capture_output: bool,
}

/// `guest-exec-status` reply with output decoded from base64.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    pub exited: bool,
    /// Exit code when the process exited normally.
    pub exit_code: Option<i32>,
    /// Signal number when the process was killed by a signal.
    pub signal: Option<i32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct WireExecStatus {
    exited: bool,
    #[serde(rename = "exitcode")]
    exit_code: Option<i32>,
    signal: Option<i32>,
    out_data: Option<String>,
    err_data: Option<String>,
    #[serde(default)]
    out_truncated: bool,
    #[serde(default)]
    err_truncated: bool,
}

/// Builds the `guest-exec` arguments object (pure; exposed to the fake for symmetry).
pub(super) fn exec_arguments(req: &ExecRequest) -> Value {
    let mut args = json!({
        "path": req.path,
        "arg": req.args,
        "capture-output": req.capture_output,
    });
    if !req.env.is_empty() {
        args["env"] = json!(req.env);
    }
    if let Some(input) = &req.input {
        args["input-data"] = json!(base64::engine::general_purpose::STANDARD.encode(input));
    }
    args
}

/// Decodes a `guest-exec-status` reply, base64 output included.
pub(super) fn decode_exec_status(
    command: &str,
    value: Value,
) -> Result<ExecStatus, GuestAgentError> {
    let wire: WireExecStatus =
        serde_json::from_value(value).map_err(|source| GuestAgentError::Decode {
            command: command.to_string(),
            source,
        })?;
    let decode = |field: &'static str, data: Option<String>| -> Result<Vec<u8>, GuestAgentError> {
        match data {
            None => Ok(Vec::new()),
            Some(s) => base64::engine::general_purpose::STANDARD
                .decode(s.as_bytes())
                .map_err(|source| GuestAgentError::Base64 {
                    command: command.to_string(),
                    field,
                    source,
                }),
        }
    };
    Ok(ExecStatus {
        exited: wire.exited,
        exit_code: wire.exit_code,
        signal: wire.signal,
        stdout: decode("out-data", wire.out_data)?,
        stderr: decode("err-data", wire.err_data)?,
        stdout_truncated: wire.out_truncated,
        stderr_truncated: wire.err_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_arguments_encode_stdin_and_env() {
        let req = ExecRequest {
            path: "/bin/sh".into(),
            args: vec!["-c".into(), "cat".into()],
            env: vec!["A=1".into()],
            input: Some(b"hello".to_vec()),
            capture_output: true,
        };
        assert_eq!(
            exec_arguments(&req),
            json!({"path": "/bin/sh", "arg": ["-c", "cat"], "env": ["A=1"],
                   "input-data": "aGVsbG8=", "capture-output": true})
        );
    }

    #[test]
    fn exec_status_decoding() {
        let s = decode_exec_status(
            "x",
            json!({"exited": true, "exitcode": 3, "out-data": "aGk=", "err-truncated": true}),
        )
        .unwrap();
        assert_eq!(
            s,
            ExecStatus {
                exited: true,
                exit_code: Some(3),
                signal: None,
                stdout: b"hi".to_vec(),
                stderr: vec![],
                stdout_truncated: false,
                stderr_truncated: true
            }
        );
        assert!(matches!(
            decode_exec_status("x", json!({"exited": true, "out-data": "!!"})),
            Err(GuestAgentError::Base64 {
                field: "out-data",
                ..
            })
        ));
    }

    #[test]
    fn interfaces_decode() {
        let v = json!([{"name": "lo", "hardware-address": "00:00:00:00:00:00",
            "ip-addresses": [{"ip-address-type": "ipv4", "ip-address": "127.0.0.1", "prefix": 8}],
            "statistics": {"rx-bytes": 1}}]);
        let ifs: Vec<GuestNetworkInterface> = serde_json::from_value(v).unwrap();
        assert_eq!(
            ifs[0].ip_addresses[0].ip_address_type,
            GuestIpAddressType::Ipv4
        );
        assert_eq!(ifs[0].ip_addresses[0].prefix, 8);
    }
}

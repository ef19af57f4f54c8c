//! GuestAgent against the real qemu-ga binary, run on the host in `unix-listen` mode (same
//! parser and dispatcher as inside a guest; only the transport differs). Commands that could
//! change the host are blocked with `--block-rpcs`.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vireo_qmp::{FreezeError, FsFreezeStatus, GuestAgent, GuestAgentError, ShutdownMode};

const BLOCKED: &str = "guest-shutdown,guest-suspend-disk,guest-suspend-ram,guest-suspend-hybrid,\
guest-set-time,guest-file-open,guest-file-write,guest-fsfreeze-freeze,guest-fsfreeze-freeze-list,\
guest-fsfreeze-thaw,\
guest-set-vcpus,guest-set-memory-blocks,guest-set-user-password,guest-ssh-add-authorized-keys,\
guest-ssh-remove-authorized-keys,guest-fstrim";

async fn start_agent(dir: &Path) -> (tokio::process::Child, std::path::PathBuf) {
    let sock = dir.join("qga.sock");
    let child = tokio::process::Command::new("qemu-ga")
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-t")
        .arg(dir)
        .args(["-b", BLOCKED])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-guest-agent is installed");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "qemu-ga did not create its socket"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (child, sock)
}

#[tokio::test]
async fn real_qemu_ga_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, sock) = start_agent(dir.path()).await;
    let ga = GuestAgent::new(&sock);
    ga.ping().await.unwrap();
    let info = ga.info().await.unwrap();
    assert!(
        info.version.starts_with('7') || info.version.starts_with('8'),
        "{info:?}"
    );
    assert!(info
        .supported_commands
        .iter()
        .any(|c| c.name == "guest-exec" && c.enabled));
    let host = ga.get_host_name().await.unwrap();
    assert!(!host.is_empty());
    let os = ga.get_osinfo().await.unwrap();
    assert!(os.kernel_release.is_some(), "{os:?}");
    let ifs = ga.network_get_interfaces().await.unwrap();
    assert!(ifs.iter().any(|i| i.name == "lo"), "{ifs:?}");

    let out = ga
        .run(
            "/bin/sh",
            &["-c".into(), "cat; echo to-stderr >&2; exit 3".into()],
            Some(b"from stdin\n"),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stdout, b"from stdin\n");
    assert_eq!(out.stderr, b"to-stderr\n");

    let killed = ga
        .run(
            "/bin/sh",
            &["-c".into(), "kill -9 $$".into()],
            None,
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert_eq!(killed.signal, Some(9));

    // guest-shutdown is blocked here, so the agent answers with an error instead of silence:
    // this exercises the error path of the no-reply command.
    let err = ga.shutdown(ShutdownMode::Powerdown).await.unwrap_err();
    assert!(
        matches!(&err, GuestAgentError::Command { class, .. } if class == "CommandNotFound"),
        "{err:?}"
    );
    ga.ping().await.unwrap();

    // Freezing is blocked here (it would freeze the host): a rejected freeze is reported as
    // such, the work never runs, and no thaw is sent (a thaw, blocked too, would turn the
    // outcome into FreezeError::Thaw).
    assert_eq!(ga.fsfreeze_status().await.unwrap(), FsFreezeStatus::Thawed);
    let ran = std::sync::atomic::AtomicBool::new(false);
    let err = ga
        .with_frozen_filesystems(Duration::from_secs(5), Duration::from_secs(5), async {
            ran.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), std::io::Error>(())
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FreezeError::Freeze(GuestAgentError::Command { command, .. })
            if command == "guest-fsfreeze-freeze"),
        "{err:?}"
    );
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));

    // A second client (e.g. after a daemon restart) resynchronises on a fresh connection.
    drop(ga);
    let again = GuestAgent::new(&sock);
    again.ping().await.unwrap();

    child.kill().await.unwrap();
}

//! GuestAgent against the fake qemu-guest-agent (real wire protocol over a unix socket).

use std::time::Duration;

use vireo_qmp::fake::{FakeExecOutcome, FakeGuestAgent, FakeGuestConfig};
use vireo_qmp::{GuestAgent, GuestAgentError, GuestIpAddressType, ShutdownMode};

async fn fake(config: FakeGuestConfig) -> (tempfile::TempDir, FakeGuestAgent) {
    let dir = tempfile::tempdir().unwrap();
    let agent = FakeGuestAgent::start(dir.path().join("qga.sock"), config)
        .await
        .unwrap();
    (dir, agent)
}

#[tokio::test]
async fn information_round_trip() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    let ga = GuestAgent::new(fake.path());
    ga.ping().await.unwrap();
    let info = ga.info().await.unwrap();
    assert_eq!(info.version, "7.2.0");
    let shutdown = info
        .supported_commands
        .iter()
        .find(|c| c.name == "guest-shutdown")
        .unwrap();
    assert!(shutdown.enabled && !shutdown.success_response);
    assert_eq!(ga.get_host_name().await.unwrap(), "fake-guest");
    let os = ga.get_osinfo().await.unwrap();
    assert_eq!(os.id.as_deref(), Some("vireo-tiny"));
    assert_eq!(os.kernel_release.as_deref(), Some("6.1.0"));
    let ifs = ga.network_get_interfaces().await.unwrap();
    assert_eq!(ifs.len(), 2);
    assert_eq!(
        ifs[1].hardware_address.as_deref(),
        Some("0a:76:72:00:00:01")
    );
    assert_eq!(
        ifs[1].ip_addresses[1].ip_address_type,
        GuestIpAddressType::Ipv6
    );
    // One sync on connect, then plain requests on the synchronised stream.
    let received = fake.received();
    assert_eq!(received[0], "guest-sync-delimited");
    assert_eq!(
        received
            .iter()
            .filter(|c| *c == "guest-sync-delimited")
            .count(),
        1
    );
    assert_eq!(fake.connections(), 1);
}

#[tokio::test]
async fn sync_skips_garbage_and_stale_replies_before_the_sentinel() {
    let mut garbage = b"boot noise {\"return\": {}, \"id\": 5}\n".to_vec();
    // A stale delimited sync reply with somebody else's id, and non-UTF-8 bytes.
    garbage.extend_from_slice(b"\xff{\"return\": 12345}\n\xfe\x00junk{{{");
    let (_dir, fake) = fake(FakeGuestConfig {
        garbage_on_connect: garbage,
        ..Default::default()
    })
    .await;
    let ga = GuestAgent::new(fake.path());
    ga.ping().await.unwrap();
    assert_eq!(fake.received(), ["guest-sync-delimited", "guest-ping"]);
}

#[tokio::test]
async fn unresponsive_guest_times_out_then_resynchronises() {
    let (_dir, fake) = fake(FakeGuestConfig {
        responsive: false,
        ..Default::default()
    })
    .await;
    let ga = GuestAgent::new(fake.path());
    let short = Duration::from_millis(150);
    for _ in 0..3 {
        let err = ga.ping_with_timeout(short).await.unwrap_err();
        assert!(matches!(err, GuestAgentError::Timeout { .. }), "{err:?}");
    }
    // The guest comes up and processes everything queued: three stale syncs, then ours.
    fake.set_responsive(true);
    ga.ping_with_timeout(Duration::from_secs(2)).await.unwrap();
    let received = fake.received();
    assert_eq!(
        received
            .iter()
            .filter(|c| *c == "guest-sync-delimited")
            .count(),
        4
    );
    assert_eq!(received.last().map(String::as_str), Some("guest-ping"));
    assert_eq!(
        fake.connections(),
        1,
        "timeouts keep the socket, only the sync state is reset"
    );
}

#[tokio::test]
async fn stale_replies_on_a_synced_stream_are_skipped_by_id() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    let ga = GuestAgent::new(fake.path());
    ga.ping().await.unwrap();
    assert!(fake.inject(b"{\"return\": {\"host-name\": \"stale\"}, \"id\": 1}\n"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(ga.get_host_name().await.unwrap(), "fake-guest");
}

#[tokio::test]
async fn malformed_reply_forces_a_resync() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    let ga = GuestAgent::new(fake.path());
    ga.ping().await.unwrap();
    assert!(fake.inject(b"this is not json\n"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = ga.ping().await.unwrap_err();
    assert!(matches!(err, GuestAgentError::Protocol { .. }), "{err:?}");
    ga.ping().await.unwrap();
    let syncs = fake
        .received()
        .iter()
        .filter(|c| *c == "guest-sync-delimited")
        .count();
    assert_eq!(syncs, 2);
}

#[tokio::test]
async fn exec_round_trip_with_polling() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    fake.set_exec_handler(|exec| {
        if exec.path == "/bin/false" {
            return FakeExecOutcome {
                exit_code: Some(1),
                ..Default::default()
            };
        }
        if exec.path == "/bin/kill-me" {
            return FakeExecOutcome {
                signal: Some(9),
                ..Default::default()
            };
        }
        let mut stdout = exec.input.clone();
        stdout.extend_from_slice(exec.args.join(" ").as_bytes());
        FakeExecOutcome {
            exit_code: Some(3),
            stdout,
            stderr: b"warning\n".to_vec(),
            running_polls: 3,
            ..Default::default()
        }
    });
    let ga = GuestAgent::new(fake.path());
    let out = ga
        .run(
            "/bin/tool",
            &["a".into(), "b".into()],
            Some(b"in:\xff\x00"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert!(out.exited);
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stdout, b"in:\xff\x00a b");
    assert_eq!(out.stderr, b"warning\n");
    let polls = fake
        .received()
        .iter()
        .filter(|c| *c == "guest-exec-status")
        .count();
    assert_eq!(polls, 4, "three 'still running' answers, then the result");

    let failed = ga
        .run("/bin/false", &[], None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(failed.exit_code, Some(1));
    let killed = ga
        .run("/bin/kill-me", &[], None, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!((killed.exit_code, killed.signal), (None, Some(9)));

    let err = ga.exec_status(424242).await.unwrap_err();
    assert!(
        matches!(&err, GuestAgentError::Command { class, .. } if class == "GenericError"),
        "{err:?}"
    );
}

#[tokio::test]
async fn run_gives_up_after_its_timeout() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    fake.set_exec_handler(|_| FakeExecOutcome {
        running_polls: u32::MAX,
        ..Default::default()
    });
    let ga = GuestAgent::new(fake.path());
    let err = ga
        .run(
            "/bin/sleep",
            &["100".into()],
            None,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, GuestAgentError::RunTimeout { pid: 1000, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn shutdown_has_no_reply_yet_is_confirmed() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    let ga = GuestAgent::new(fake.path());
    ga.shutdown(ShutdownMode::Powerdown).await.unwrap();
    ga.shutdown(ShutdownMode::Reboot).await.unwrap();
    assert_eq!(fake.shutdown_requests(), ["powerdown", "reboot"]);
    // The confirming sync left the stream synchronised: the next call sends no extra sync.
    ga.ping().await.unwrap();
    let syncs = fake
        .received()
        .iter()
        .filter(|c| *c == "guest-sync-delimited")
        .count();
    assert_eq!(syncs, 3, "connect sync + one confirmation per shutdown");
}

#[tokio::test]
async fn dropped_connection_is_reopened() {
    let (_dir, fake) = fake(FakeGuestConfig::default()).await;
    let ga = GuestAgent::with_timeout(fake.path(), Duration::from_secs(2));
    ga.ping().await.unwrap();
    assert!(fake.drop_connection());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = ga.ping().await.unwrap_err();
    assert!(
        matches!(
            err,
            GuestAgentError::Closed { .. } | GuestAgentError::Write { .. }
        ),
        "{err:?}"
    );
    ga.ping().await.unwrap();
    assert_eq!(fake.connections(), 2);
}

#[tokio::test]
async fn missing_socket_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let ga = GuestAgent::new(dir.path().join("nope.sock"));
    assert!(matches!(
        ga.ping().await,
        Err(GuestAgentError::Connect { .. })
    ));
}

//! `vireo`: the command-line client of the Vireo daemon (`vireo <noun> <verb>`).
//!
//! Invariants: exit status 0 on success; 1 with one line `error: <msg>: <cause>: …` on
//! stderr on failure; 2 for usage errors (clap). `vm exec` exits with the guest command's
//! status. Results go to stdout in the `--output` format; progress, hints and logs go to
//! stderr (progress only on a terminal).

mod admin;
mod cloudinit_args;
mod console;
mod image;
// The local image tools (`vireo image info|convert|create|check|compare|map`) are written by
// the image engineer in image_local.rs and flattened into `vireo image` (see image.rs).
mod image_local;
mod network;
mod output;
mod progress;
mod storage;
mod vm;
mod vm_storage;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use vireo_client::{Client, ClientOptions, Fingerprint, Remote, TlsTrust};
use vireo_types::Name;

use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(
    name = "vireo",
    version,
    about = "Manage virtual machines on a Vireo daemon"
)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Heading of the options every command accepts, in help texts.
const GLOBAL_HEADING: &str = "Global options";

/// Options every command accepts.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = GLOBAL_HEADING)]
pub struct GlobalArgs {
    /// Daemon to talk to: `unix:PATH` or `https://HOST:PORT` [default: unix:$VIREO_SOCKET or
    /// unix:/run/vireo/vireo.sock]
    #[arg(long, global = true, env = "VIREO_REMOTE")]
    remote: Option<String>,
    /// API token for https remotes.
    #[arg(long, global = true, env = "VIREO_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Project of the VMs to act on [default: the daemon's default project]
    #[arg(long, global = true, env = "VIREO_PROJECT")]
    project: Option<Name>,
    #[command(flatten)]
    output: OutputArg,
    /// PEM file of certificates to trust for https remotes (a CA or the daemon's certificate).
    #[arg(long, global = true, env = "VIREO_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// SHA-256 fingerprint of the daemon's certificate to pin for https remotes.
    #[arg(
        long,
        global = true,
        env = "VIREO_TLS_FINGERPRINT",
        conflicts_with = "tls_ca"
    )]
    tls_fingerprint: Option<String>,
}

impl GlobalArgs {
    /// The `--output` format.
    pub fn output(&self) -> OutputFormat {
        self.output.0
    }

    /// A client for the selected daemon.
    pub fn client(&self) -> anyhow::Result<Client> {
        let remote = match &self.remote {
            Some(r) => r.parse::<Remote>().context("invalid --remote")?,
            None => {
                let socket = std::env::var("VIREO_SOCKET").ok();
                Remote::from_env_values(None, socket.as_deref()).context("invalid VIREO_SOCKET")?
            }
        };
        let tls = match (&self.tls_ca, &self.tls_fingerprint) {
            (Some(path), _) => TlsTrust::CaFile(path.clone()),
            (None, Some(fp)) => {
                TlsTrust::Pinned(Fingerprint::parse(fp).context("invalid --tls-fingerprint")?)
            }
            (None, None) => TlsTrust::Unconfigured,
        };
        let mut options = ClientOptions::new(remote);
        options.token = self.token.clone().filter(|t| !t.is_empty());
        options.tls = tls;
        options.project = self.project.clone();
        Ok(Client::new(options)?)
    }
}

/// The global `--output` option, read leniently.
///
/// The local image tools (image_local.rs) define their own `--output` with another value
/// type; clap then does not propagate the global one into them but copies their value up
/// under the same id. Reading the global with a type check (instead of the derive's panicking
/// accessor) keeps both working: in those commands this one is simply the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct OutputArg(pub OutputFormat);

const OUTPUT_ID: &str = "output";

impl clap::FromArgMatches for OutputArg {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let format = matches
            .try_get_one::<OutputFormat>(OUTPUT_ID)
            .ok()
            .flatten();
        Ok(OutputArg(format.copied().unwrap_or_default()))
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for OutputArg {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new(OUTPUT_ID)
                .long("output")
                .short('o')
                .global(true)
                .value_name("FORMAT")
                .value_parser(clap::builder::EnumValueParser::<OutputFormat>::new())
                .default_value("table")
                .help("Output format of results")
                .help_heading(GLOBAL_HEADING),
        )
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Virtual machines.
    #[command(subcommand)]
    Vm(vm::VmCmd),
    /// Images: daemon-side (build, list, show, delete) and local disk-image tools.
    #[command(subcommand)]
    Image(image::ImageCmd),
    /// This daemon's host.
    #[command(subcommand)]
    Host(admin::HostCmd),
    /// Long-running operations.
    #[command(subcommand, alias = "op")]
    Operation(admin::OperationCmd),
    /// API tokens for https access.
    #[command(subcommand)]
    Token(admin::TokenCmd),
    /// Projects (name spaces for VMs).
    #[command(subcommand)]
    Project(admin::ProjectCmd),
    /// Print the daemon's events as JSON lines until Ctrl-C.
    Events(admin::EventsArgs),
    /// Managed networks (nat, bridged, isolated, ovs).
    #[command(subcommand, alias = "net")]
    Network(network::NetworkCmd),
    /// Storage pools and volumes.
    #[command(subcommand)]
    Storage(storage::StorageCmd),
}

/// Writes a rendered result to stdout.
pub fn print<T: serde::Serialize + output::Tabular + ?Sized>(
    format: OutputFormat,
    value: &T,
) -> anyhow::Result<()> {
    let text = output::render(format, value)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Parses `--timeout` style values: seconds, or with a unit (`90s`, `5m`, `1h`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90, 90s, 5m or 1h"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?} is not a duration like 90, 90s, 5m or 1h")),
    };
    Ok(Duration::from_secs(secs))
}

/// Runs the command; `Ok` carries the exit status.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    let global = &cli.global;
    match cli.command {
        Command::Vm(cmd) => vm::run(global, cmd).await,
        Command::Image(cmd) => image::run(global, cmd).await,
        Command::Host(cmd) => admin::host(global, cmd).await,
        Command::Operation(cmd) => admin::operation(global, cmd).await,
        Command::Token(cmd) => admin::token(global, cmd).await,
        Command::Project(cmd) => admin::project(global, cmd).await,
        Command::Events(args) => admin::events(global, args).await,
        Command::Network(cmd) => network::run(global, cmd).await,
        Command::Storage(cmd) => storage::run(global, cmd).await,
    }
}

fn local_image_command(cmd: image_local::ImageLocalCmd) -> ExitCode {
    match image_local::run(cmd) {
        // Exit statuses are 0-255; anything else is reported as a plain failure.
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // Logs are for debugging the client itself: off unless VIREO_LOG asks.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VIREO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    // The local image tools need no daemon (and run their own threads): no runtime for them.
    let cli = match cli.command {
        Command::Image(image::ImageCmd::Local(cmd)) => return local_image_command(cmd),
        command => Cli { command, ..cli },
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole cause chain on one line, joined by ": ".
            eprintln!("error: {e:#}");
            1
        }
    };
    let _ = std::io::stdout().flush();
    // Do not wait for a stdin reader thread blocked in read(2) (console, exec --stdin).
    runtime.shutdown_background();
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn parses_vm_create() {
        let cli = Cli::try_parse_from([
            "vireo",
            "--project",
            "team-a",
            "vm",
            "create",
            "web1",
            "--image",
            "tiny",
            "--memory",
            "1GiB",
            "--network",
            "lan",
            "--network",
            "dmz",
            "--start",
            "--wait",
        ])
        .unwrap();
        assert_eq!(
            cli.global.project.as_ref().map(Name::as_str),
            Some("team-a")
        );
        match cli.command {
            Command::Vm(vm::VmCmd::Create(args)) => {
                let req = args.request().unwrap();
                assert_eq!(req.memory_mib, Some(1024));
                assert_eq!(
                    req.networks
                        .unwrap()
                        .iter()
                        .map(Name::as_str)
                        .collect::<Vec<_>>(),
                    ["lan", "dmz"]
                );
                assert!(req.start);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn usage_errors() {
        for argv in [
            &["vireo", "vm", "create", "Bad_Name", "--image", "tiny"][..],
            &["vireo", "vm", "create", "web1"],
            &[
                "vireo",
                "vm",
                "create",
                "web1",
                "--image",
                "tiny",
                "--no-network",
                "--network",
                "x",
            ],
            &["vireo", "--output", "xml", "vm", "list"],
            &["vireo", "vm", "frobnicate"],
        ] {
            let err = Cli::try_parse_from(argv).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{argv:?}");
        }
    }
}

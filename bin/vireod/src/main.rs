//! `vireod`: the Vireo daemon. Opens the state store, decides the accelerator, re-attaches
//! surviving VMs and serves the REST API on a root-only unix socket (and, when configured, on
//! TCP with TLS and API tokens).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

mod api;
mod builders;
mod config;
mod host;
mod listen;
mod metrics;
mod network;
mod tls;
mod tokens;
mod ui;

use config::{AccelPolicy, Overrides};

#[derive(Debug, Parser)]
#[command(name = "vireod", version, about = "Vireo virtualization daemon")]
struct Args {
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory (default /var/lib/vireo).
    #[arg(long, env = "VIREO_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// Unix socket path (default /run/vireo/vireo.sock).
    #[arg(long, env = "VIREO_SOCKET")]
    socket: Option<PathBuf>,
    /// TCP listener ADDR:PORT (TLS and API tokens required).
    #[arg(long)]
    listen: Option<String>,
    /// Node name (default: the hostname).
    #[arg(long)]
    node: Option<String>,
    /// Accelerator policy: auto, kvm or tcg.
    #[arg(long)]
    accel: Option<AccelPolicy>,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if args.print_openapi {
        print!("{}", api::openapi_json());
        return std::process::ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(p) => config::load_file(p)?,
        None => config::FileConfig::default(),
    };
    let hostname = host::hostname();
    let cfg = config::resolve(
        file,
        Overrides {
            state_dir: args.state_dir,
            socket: args.socket,
            listen: args.listen,
            node: args.node,
            accel: args.accel,
        },
        &hostname,
    )?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&cfg.state_dir)
            .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
        std::fs::set_permissions(&cfg.state_dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", cfg.state_dir.display()))?;
    }
    let store: Arc<dyn vireo_store::Store> = Arc::new(
        vireo_store::SqliteStore::open(&cfg.state_dir).context("opening the state store")?,
    );

    let hv = vireo_engine::qemu_hv::QemuHypervisor::new(vireo_engine::qemu_hv::QemuConfig {
        qemu_binary: cfg.qemu_binary.clone(),
        accel_policy: cfg.accel.as_str().to_string(),
        accel_cache: cfg.image_cache_dir.join("accel.json"),
    });
    // Decide the accelerator now if a kernel to probe with is at hand (a built image); else
    // the first VM start decides it.
    if let Some(kernel) = builders::any_kernel(&store).await {
        hv.decide_accel(&kernel).await;
    }
    let hv = Arc::new(hv);

    let mut builders: HashMap<String, Arc<dyn vireo_engine::ImageBuilder>> = HashMap::new();
    let tiny_cache = cfg.image_cache_dir.join("tiny");
    builders.insert(
        "tiny".into(),
        Arc::new(builders::TinyBuilder {
            cache_dir: tiny_cache.clone(),
        }),
    );
    builders.insert(
        "tiny-disk".into(),
        Arc::new(builders::TinyDiskBuilder {
            cache_dir: tiny_cache,
        }),
    );
    builders.insert(
        "debian".into(),
        Arc::new(builders::DebianBuilder {
            cache_dir: cfg.image_cache_dir.join("debian"),
        }),
    );

    let (engine_hv, net) = network::setup(&cfg, store.clone(), hv.clone()).await;
    let engine = vireo_engine::Engine::open(
        vireo_engine::EngineConfig {
            state_dir: cfg.state_dir.clone(),
            node: cfg.node.clone(),
        },
        store.clone(),
        engine_hv,
        builders,
    )
    .await
    .context("opening the engine")?;
    network::start(&engine, net).await?;

    let state = api::AppState {
        engine: engine.clone(),
        host: Arc::new(host::HostFacts {
            hostname,
            hv: hv.clone(),
        }),
        metrics: Arc::new(metrics::Metrics::default()),
    };
    let app = api::router(state);

    let unix = listen::bind_unix(&cfg.socket)?;
    tracing::info!(socket = %cfg.socket.display(), node = %cfg.node, state_dir = %cfg.state_dir.display(), "vireod listening");
    let mut tasks = vec![tokio::spawn(listen::serve_unix(unix, app.clone()))];
    if let Some(addr) = cfg.listen {
        let tls = tls::load_or_generate(
            &cfg.state_dir,
            cfg.tls_cert.as_deref(),
            cfg.tls_key.as_deref(),
        )
        .context("preparing TLS")?;
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(
            %addr,
            cert = %tls.cert_path.display(),
            generated = tls.generated,
            fingerprint = %tls.fingerprint.colon_hex(),
            "TLS listener up (API token required)"
        );
        tasks.push(tokio::spawn(listen::serve_tls(
            tcp,
            Arc::new(tls.config),
            app,
            store.clone(),
        )));
    }

    // VMs keep running when the daemon stops; a restarted daemon re-attaches them.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping (VMs keep running)"),
        _ = term.recv() => tracing::info!("terminated; stopping (VMs keep running)"),
    }
    for t in tasks {
        t.abort();
    }
    let _ = std::fs::remove_file(&cfg.socket);
    Ok(())
}

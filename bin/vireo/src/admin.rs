//! `vireo host|operation|token|project|events`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use futures::StreamExt;
use uuid::Uuid;
use vireo_api::projects::CreateProjectRequest;
use vireo_api::tokens::CreateTokenRequest;
use vireo_types::Name;

use crate::output::OutputFormat;
use crate::{parse_duration, print, progress, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Show the host: accelerator, capacity, versions.
    Show,
}

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// List recent operations.
    #[command(alias = "ls")]
    List,
    /// Show one operation with its log.
    Show { id: Uuid },
    /// Wait for an operation to finish; fails when it failed.
    Wait {
        id: Uuid,
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        timeout: Duration,
    },
    /// Cancel an operation (where it can be cancelled).
    Cancel { id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token; its secret is printed once.
    Create { name: Name },
    /// List API tokens (names only).
    #[command(alias = "ls")]
    List,
    /// Revoke an API token.
    #[command(alias = "delete")]
    Revoke { name: Name },
}

#[derive(Debug, Subcommand)]
pub enum ProjectCmd {
    /// Create a project.
    Create {
        name: Name,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List projects.
    #[command(alias = "ls")]
    List,
    /// Delete an (empty) project.
    #[command(alias = "rm")]
    Delete { name: Name },
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Comma-separated event kinds to receive (e.g. vm.state,operation) [default: all]
    #[arg(long)]
    kinds: Option<String>,
}

pub async fn host(global: &GlobalArgs, cmd: HostCmd) -> anyhow::Result<u8> {
    match cmd {
        HostCmd::Show => {
            let host = global
                .client()?
                .host()
                .await
                .context("cannot show the host")?;
            print(global.output(), &host)?;
        }
    }
    Ok(0)
}

pub async fn operation(global: &GlobalArgs, cmd: OperationCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        OperationCmd::List => {
            let ops = client
                .list_operations()
                .await
                .context("cannot list operations")?;
            print(format, ops.as_slice())?;
        }
        OperationCmd::Show { id } => {
            let op = client
                .get_operation(id)
                .await
                .with_context(|| format!("cannot show operation {id}"))?;
            print(format, &op)?;
        }
        OperationCmd::Wait { id, timeout } => {
            let op = client
                .get_operation(id)
                .await
                .with_context(|| format!("cannot wait for operation {id}"))?;
            let op = progress::wait_operation(&client, &op, timeout)
                .await
                .with_context(|| format!("operation {id}"))?;
            print(format, &op)?;
        }
        OperationCmd::Cancel { id } => {
            let op = client
                .cancel_operation(id)
                .await
                .with_context(|| format!("cannot cancel operation {id}"))?;
            print(format, &op)?;
        }
    }
    Ok(0)
}

pub async fn token(global: &GlobalArgs, cmd: TokenCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        TokenCmd::Create { name } => {
            let created = client
                .create_token(&CreateTokenRequest { name: name.clone() })
                .await
                .with_context(|| format!("cannot create token {name}"))?;
            print(format, &created)?;
        }
        TokenCmd::List => {
            let tokens = client.list_tokens().await.context("cannot list tokens")?;
            print(format, tokens.as_slice())?;
        }
        TokenCmd::Revoke { name } => {
            client
                .revoke_token(name.as_str())
                .await
                .with_context(|| format!("cannot revoke token {name}"))?;
            if format == OutputFormat::Table {
                println!("Token {name} revoked.");
            }
        }
    }
    Ok(0)
}

pub async fn project(global: &GlobalArgs, cmd: ProjectCmd) -> anyhow::Result<u8> {
    let client = global.client()?;
    let format = global.output();
    match cmd {
        ProjectCmd::Create { name, description } => {
            let project = client
                .create_project(&CreateProjectRequest {
                    name: name.clone(),
                    description,
                })
                .await
                .with_context(|| format!("cannot create project {name}"))?;
            print(format, &project)?;
        }
        ProjectCmd::List => {
            let projects = client
                .list_projects()
                .await
                .context("cannot list projects")?;
            print(format, projects.as_slice())?;
        }
        ProjectCmd::Delete { name } => {
            client
                .delete_project(name.as_str())
                .await
                .with_context(|| format!("cannot delete project {name}"))?;
            if format == OutputFormat::Table {
                println!("Project {name} deleted.");
            }
        }
    }
    Ok(0)
}

/// Prints events as JSON lines (whatever `--output` says: a stream has no table) until
/// Ctrl-C or the daemon closes the stream.
pub async fn events(global: &GlobalArgs, args: EventsArgs) -> anyhow::Result<u8> {
    let client = global.client()?;
    let mut stream = client
        .events(args.kinds.as_deref())
        .await
        .context("cannot subscribe to events")?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(0),
            next = stream.next() => match next {
                Some(event) => {
                    let event = event.context("the events stream failed")?;
                    let line = serde_json::to_string(&event).context("cannot encode an event")?;
                    let mut stdout = std::io::stdout().lock();
                    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
                }
                None => return Ok(0),
            }
        }
    }
}

//! `vireo image …`: daemon-side images (build, list, show, delete) next to the local
//! disk-image tools of image_local.rs (info, convert, create, check, compare, map), which
//! need no daemon and are flattened into the same noun.

use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use vireo_api::images::BuildImageRequest;
use vireo_types::Name;

use crate::output::OutputFormat;
use crate::{image_local, parse_duration, print, progress, GlobalArgs};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Build an image on the daemon with a builder (`tiny`: the built-in minimal guest).
    Build {
        builder: Name,
        /// Name to register the image under [default: the builder's name]
        #[arg(long)]
        name: Option<Name>,
        /// Return at once with the operation instead of waiting for it.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the build.
        #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = "30m")]
        wait_timeout: Duration,
    },
    /// List the daemon's images.
    #[command(alias = "ls")]
    List,
    /// Show one of the daemon's images.
    Show { name: Name },
    /// Delete one of the daemon's images.
    #[command(alias = "rm")]
    Delete {
        name: Name,
        #[arg(long)]
        no_wait: bool,
        #[arg(long = "wait-timeout", value_parser = parse_duration, default_value = "10m")]
        wait_timeout: Duration,
    },
    #[command(flatten)]
    Local(image_local::ImageLocalCmd),
}

pub async fn run(global: &GlobalArgs, cmd: ImageCmd) -> anyhow::Result<u8> {
    let format = global.output();
    match cmd {
        ImageCmd::Build {
            builder,
            name,
            no_wait,
            wait_timeout,
        } => {
            let client = global.client()?;
            let registered = name.clone().unwrap_or_else(|| builder.clone());
            let request = BuildImageRequest {
                builder: builder.clone(),
                name,
            };
            let op = client.build_image(&request).await.with_context(|| {
                format!("cannot build image {registered} with builder {builder}")
            })?;
            if no_wait {
                print(format, &op)?;
                return Ok(0);
            }
            progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(|| {
                    format!("cannot build image {registered} with builder {builder}")
                })?;
            let image = client
                .get_image(registered.as_str())
                .await
                .with_context(|| format!("cannot read image {registered} back"))?;
            print(format, &image)?;
            Ok(0)
        }
        ImageCmd::List => {
            let images = global
                .client()?
                .list_images()
                .await
                .context("cannot list images")?;
            print(format, images.as_slice())?;
            Ok(0)
        }
        ImageCmd::Show { name } => {
            let image = global
                .client()?
                .get_image(name.as_str())
                .await
                .with_context(|| format!("cannot show image {name}"))?;
            print(format, &image)?;
            Ok(0)
        }
        ImageCmd::Delete {
            name,
            no_wait,
            wait_timeout,
        } => {
            let client = global.client()?;
            let op = client
                .delete_image(name.as_str())
                .await
                .with_context(|| format!("cannot delete image {name}"))?;
            if no_wait {
                print(format, &op)?;
                return Ok(0);
            }
            let op = progress::wait_operation(&client, &op, wait_timeout)
                .await
                .with_context(|| format!("cannot delete image {name}"))?;
            match format {
                OutputFormat::Table => println!("Image {name} deleted."),
                _ => print(format, &op)?,
            }
            Ok(0)
        }
        // main() runs these before starting the async runtime; this arm only keeps the match
        // total should that ever change.
        ImageCmd::Local(cmd) => {
            let code = tokio::task::spawn_blocking(move || image_local::run(cmd))
                .await
                .context("the local image command panicked")??;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}

//! `meshtrain devices`: what a plugin exposes.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use pjrt::install::{self, Backend};
use pjrt::{Client, OptionValue, Plugin};

/// Arguments of `meshtrain devices`.
#[derive(clap::Args)]
pub struct Args {
    /// Backend whose pinned plugin to use (cpu, cuda, cuda12, cuda13, tpu).
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Number of virtual devices (CPU backend only).
    #[arg(long)]
    device_count: Option<usize>,
    /// Plugin `.so` to load instead of the pinned one (also MESHTRAIN_PJRT_PLUGIN).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    let backend = Backend::parse(&args.backend)?;
    let path = install::resolve(backend, args.plugin.as_deref())?;
    let plugin = Plugin::load(&path)?;
    let mut options = Vec::new();
    match (backend, args.device_count) {
        (Backend::Cpu, Some(n)) => options.push(("cpu_device_count", OptionValue::Int(n as i64))),
        (Backend::Cpu, None) => {}
        // Listing devices should not reserve their memory.
        (Backend::Cuda12 | Backend::Cuda13, None) => {
            options.push(("preallocate", OptionValue::Bool(false)))
        }
        (_, Some(_)) => anyhow::bail!("--device-count applies to the cpu backend only"),
        (_, None) => {}
    }
    let client = Client::new(&plugin, &options)
        .with_context(|| format!("creating a {} client from {}", args.backend, path.display()))?;
    let (major, minor) = plugin.api_version();
    let mut out = std::io::stdout().lock();
    if args.json {
        let devices: Vec<_> = client
            .devices()
            .iter()
            .map(|d| serde_json::json!({"id": d.id, "kind": d.kind, "process_index": d.process_index}))
            .collect();
        let doc = serde_json::json!({
            "platform": client.platform_name(),
            "api_version": format!("{major}.{minor}"),
            "plugin": path.display().to_string(),
            "devices": devices,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    writeln!(out, "platform     {}", client.platform_name())?;
    writeln!(out, "plugin       {}", path.display())?;
    writeln!(out, "PJRT C API   {major}.{minor}")?;
    writeln!(out, "devices      {}", client.devices().len())?;
    writeln!(out, "{:>4}  {:<16} {:>7}", "id", "kind", "process")?;
    for d in client.devices() {
        writeln!(out, "{:>4}  {:<16} {:>7}", d.id, d.kind, d.process_index)?;
    }
    Ok(())
}

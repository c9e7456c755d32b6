//! `meshtrain plan --config FILE --topology v5e:16x16 [--set ...] [--json]`

use std::path::PathBuf;

use anyhow::Result;
use train::TrainConfig;

/// Arguments of `meshtrain plan`.
#[derive(clap::Args)]
pub struct Args {
    /// TOML config of the training job.
    #[arg(long)]
    config: PathBuf,
    /// TPU slice, e.g. v5e:16x16, v6e:8x8, v5p:4x4x4.
    #[arg(long)]
    topology: String,
    /// Override any config key by its dotted path.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Number of slices joined over the data-center network: the mesh's data axis spans them.
    /// A config with mesh.data = 1 gets mesh.data = N and N times its data.batch_size.
    #[arg(long, default_value_t = 1)]
    slices: usize,
    /// With --slices N placed on mesh.data: keep data.batch_size as the whole job's batch
    /// (split over the slices) instead of giving every slice that batch.
    #[arg(long)]
    keep_batch: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<()> {
    quiet_deviceless_libtpu();
    let mut cfg = TrainConfig::load(Some(&args.config), &args.sets)?;
    let given = cfg.data.batch_size;
    let data = cfg.mesh.data;
    cfg.place_slices(args.slices, !args.keep_batch)?;
    if cfg.mesh.data != data {
        let batch = if args.keep_batch {
            "--keep-batch: the job's batch, split over the slices".to_string()
        } else {
            format!(
                "{given} per slice, as the config gives; --keep-batch keeps {given} for the job"
            )
        };
        let note = format!(
            "--slices {n}: mesh.data = {n} (one data replica per slice); data.batch_size = {} ({batch})",
            cfg.data.batch_size,
            n = args.slices,
        );
        // Said before the compile (minutes); beside --json, on stderr.
        if args.json {
            eprintln!("{note}");
        } else {
            println!("{note}");
        }
    }
    let report = train::plan::plan(&cfg, &args.topology, args.slices)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

/// libtpu, loaded where there is no TPU, looks for a TPU VM's environment
/// and logs errors about its absence (accelerator type, worker hostnames)
/// that say nothing about the plan: a deviceless compile is told it is one
/// lone host and keeps its logs to itself, unless these are set already.
/// The plan's numbers are the same either way.
fn quiet_deviceless_libtpu() {
    if std::path::Path::new("/dev/accel0").exists() || std::path::Path::new("/dev/vfio/0").exists()
    {
        return; // a TPU VM: libtpu reads its own environment.
    }
    for (key, value) in [
        ("TPU_ACCELERATOR_TYPE", "v5litepod-4"),
        ("TPU_WORKER_HOSTNAMES", "localhost"),
        ("TPU_MIN_LOG_LEVEL", "3"),
    ] {
        if std::env::var_os(key).is_none() {
            // SAFETY: before the plugin is loaded; the command has started no thread.
            unsafe { std::env::set_var(key, value) };
        }
    }
}

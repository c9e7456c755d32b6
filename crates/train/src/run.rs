//! The training loop: mesh -> build the step -> compile (report memory) ->
//! initialise -> loop over batches -> metrics, plot, final export.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use gemma::param_specs;
use pjrt::{Buffer, Client};

use crate::config::TrainConfig;
use crate::shard::{extract, insert, shard_ranges};
use crate::step::{Plan, Slot, build_for};
use crate::{Error, Result, checkpoint, mfu, state};

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct RunSummary {
    /// `(step, loss)` of every step.
    pub losses: Vec<(u64, f32)>,
    /// Seconds to compile the step.
    pub compile_seconds: f64,
    /// Median seconds per step (after the first).
    pub median_step_seconds: f64,
    /// Where metrics, config, plot and the final model are.
    pub run_dir: PathBuf,
    /// Per-device peak bytes of the compiled step.
    pub peak_bytes_per_device: i64,
    /// The start-up sharding report.
    pub report: crate::report::ShardingReport,
}

/// Creates the client the config asks for.
pub fn make_client(cfg: &TrainConfig) -> Result<Client> {
    let backend = pjrt::install::Backend::parse(&cfg.runtime.backend)?;
    let path = pjrt::install::resolve(backend, cfg.runtime.plugin.as_deref())?;
    let plugin = pjrt::Plugin::load(path)?;
    let mut options = Vec::new();
    if backend == pjrt::install::Backend::Cpu {
        options.push((
            "cpu_device_count",
            pjrt::OptionValue::Int(cfg.runtime.device_count as i64),
        ));
    }
    let client = Client::new(&plugin, &options)?;
    if client.devices().len() < cfg.runtime.device_count {
        return Err(Error::config(
            "runtime",
            "runtime.device_count",
            format!(
                "{} devices asked, the {} plugin has {}",
                cfg.runtime.device_count,
                client.platform_name(),
                client.devices().len()
            ),
        ));
    }
    Ok(client)
}

/// Which client device holds each partition, and which partition each of
/// the executable's argument lists is for.
pub(crate) struct Placement {
    /// Client device index of partition `p`.
    pub device_of: Vec<usize>,
    /// Partition of the executable's `i`-th device.
    pub partition_of: Vec<usize>,
}

impl Placement {
    /// Orders the client's devices along the torus (`mesh.tensor_along`);
    /// returns the placement and the device ids in partition order.
    fn new(cfg: &TrainConfig, client: &Client, plan: &Plan) -> Result<(Placement, Vec<i64>)> {
        let n = plan.mesh.devices() as usize;
        let devices: Vec<mesh::Device> = client.devices()[..n]
            .iter()
            .map(|d| mesh::Device {
                id: d.id as i64,
                coords: vec![],
                slice: 0,
            })
            .collect();
        let ids = mesh::device_order(&plan.mesh, &devices, cfg.tensor_along())?;
        let device_of = ids
            .iter()
            .map(|id| {
                client
                    .devices()
                    .iter()
                    .position(|d| d.id as i64 == *id)
                    .expect("ids come from the client")
            })
            .collect();
        Ok((
            Placement {
                device_of,
                partition_of: Vec::new(),
            },
            ids,
        ))
    }
}

/// Splits a host array into one buffer per partition, each on its device.
pub(crate) fn put<T: pjrt::NativeType>(
    client: &Client,
    plan: &Plan,
    at: &Placement,
    slot: &Slot,
    data: &[T],
) -> Result<Vec<Buffer>> {
    at.device_of
        .iter()
        .enumerate()
        .map(|(p, &device)| {
            let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
            let dims: Vec<i64> = r.iter().map(|x| x.len() as i64).collect();
            Ok(client.buffer_from_host(&extract(data, &slot.shape, &r), &dims, device)?)
        })
        .collect()
}

/// Gathers one buffer per device back into a host array.
pub(crate) fn get(plan: &Plan, slot: &Slot, shards: &[&Buffer]) -> Result<Vec<f32>> {
    let n: usize = slot.shape.iter().product();
    let mut out = vec![0f32; n];
    for (p, buf) in shards.iter().enumerate() {
        let r = shard_ranges(&plan.mesh, &slot.shape, &slot.axes, p);
        insert(&mut out, &slot.shape, &r, &buf.to_host::<f32>()?);
    }
    Ok(out)
}

/// Runs the training job: from scratch, or from the checkpoint
/// `train.resume` names, saving checkpoints as `train.checkpoint_every` asks.
pub fn train(cfg: &TrainConfig, show_progress: bool) -> Result<RunSummary> {
    let compute = cfg.compute_options()?;
    let (model, plan, step) = build_for(cfg)?;
    let run_dir = cfg.train.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|e| Error::io("creating", &run_dir, e))?;
    let ckpt_root = run_dir.join("checkpoints");
    let resume = find_resume(cfg, &model, &ckpt_root)?;
    let start = resume.as_ref().map_or(0, |c| c.step());
    write_file(&run_dir.join("config.toml"), cfg.to_toml().as_bytes())?;

    let client = make_client(cfg)?;
    let loader_state = resume.as_ref().map(|c| c.manifest.loader);
    let mut loader = data::Loader::new(&cfg.data, 0, 1, loader_state)?;
    if let Some(v) = loader.info().vocab_size
        && v > model.vocab_size
    {
        return Err(Error::config(
            "data",
            "data.tokenizer",
            format!(
                "its vocabulary has {v} pieces, model.vocab_size is {}",
                model.vocab_size
            ),
        ));
    }
    let mlir = step.program.to_mlir();
    let n = plan.mesh.devices();
    let (mut at, order) = Placement::new(cfg, &client, &plan)?;
    let mut options = if n > 1 {
        pjrt::CompileOptions {
            device_assignment: Some(vec![order.clone()]),
            ..pjrt::CompileOptions::spmd(n)
        }
    } else {
        pjrt::CompileOptions::single()
    };
    options.xla_options = cfg.runtime.xla_options(compute.dtype)?;
    let t0 = Instant::now();
    let exe = client.compile(&mlir, &options)?;
    let compile_seconds = t0.elapsed().as_secs_f64();
    at.partition_of = exe
        .device_ids()?
        .iter()
        .map(|id| {
            order
                .iter()
                .position(|o| *o == *id as i64)
                .expect("executable devices are the assigned ones")
        })
        .collect();
    let stats = exe.executable().memory_stats()?;
    eprintln!(
        "meshtrain: {} parameters, mesh data={} fsdp={} tensor={}, step compiled in {compile_seconds:.1} s, {:.1} MiB peak per device",
        model.num_params(),
        plan.mesh.data,
        plan.mesh.fsdp,
        plan.mesh.tensor,
        stats.peak_bytes as f64 / (1 << 20) as f64
    );
    let report = crate::report::ShardingReport::new(
        &plan,
        &step.params,
        order.clone(),
        stats,
        &exe.executable().optimized_hlo()?,
    );
    if show_progress {
        eprint!("{}", report.render());
    }
    write_file(&run_dir.join("sharding.txt"), report.render().as_bytes())?;
    write_file(
        &run_dir.join("sharding.json"),
        serde_json::to_string_pretty(&report.to_json())
            .expect("JSON")
            .as_bytes(),
    )?;

    let mut state = match &resume {
        Some(c) => {
            let m = c.manifest.mesh;
            eprintln!(
                "meshtrain: resuming from {} (step {start}, saved under mesh data={} fsdp={} tensor={})",
                c.dir.display(),
                m.data,
                m.fsdp,
                m.tensor
            );
            state::restore(c, &client, &plan, &at, &step)?
        }
        None => state::initial(cfg, &client, &plan, &at, &step)?,
    };
    drop(resume);
    if start >= cfg.train.steps {
        eprintln!(
            "meshtrain: {} already holds step {start} of train.steps = {}: nothing to train \
             (raise train.steps to continue, or use another train.run_dir to start over)",
            run_dir.display(),
            cfg.train.steps
        );
    }
    let peak = match cfg.train.peak_flops_per_device {
        Some(p) => p * n as f64,
        // Virtual CPU devices share the host's cores: the host is the peak.
        None => mfu::measure_peak_flops(&client, compute.dtype == hlo::DType::BF16)?,
    };
    let tokens_per_step = (cfg.data.batch_size * cfg.data.seq_len) as f64;
    let flops_per_step = mfu::flops_per_token(&model, cfg.data.seq_len) * tokens_per_step;

    let metrics_path = run_dir.join("metrics.jsonl");
    let mut metrics = open_metrics(&metrics_path, start)?;
    let mut writer = checkpoint::Writer::new(ckpt_root, cfg.train.keep_checkpoints);
    let bar = progress_bar(cfg.train.steps, show_progress);
    bar.set_position(start.min(cfg.train.steps));
    let mut losses = Vec::new();
    let mut times = Vec::new();
    for s in start..cfg.train.steps {
        let t = Instant::now();
        let batch = loader.next_batch()?;
        if let Some(&bad) = batch
            .tokens
            .iter()
            .find(|&&id| id < 0 || id as usize >= model.vocab_size)
        {
            return Err(Error::config(
                "data",
                "data.path",
                format!(
                    "step {s}: token id {bad} is outside the vocabulary (model.vocab_size = {})",
                    model.vocab_size
                ),
            ));
        }
        let inputs = [
            put(&client, &plan, &at, &step.batch[0], &batch.tokens)?,
            put(&client, &plan, &at, &step.batch[1], &batch.targets)?,
            put(&client, &plan, &at, &step.batch[2], &batch.loss_mask)?,
            put(&client, &plan, &at, &step.batch[3], &batch.segment_ids)?,
            put(&client, &plan, &at, &step.batch[4], &batch.positions)?,
        ];
        let args: Vec<Vec<&Buffer>> = at
            .partition_of
            .iter()
            .map(|&p| {
                state[p]
                    .iter()
                    .chain(inputs.iter().map(|x| &x[p]))
                    .collect()
            })
            .collect();
        let mut outs = exe.execute(&args)?;
        let k = 3 * step.params.len() + 1;
        let scalars: Vec<f32> = outs[0][k..k + 3]
            .iter()
            .map(|b| Ok(b.to_host::<f32>()?[0]))
            .collect::<Result<_>>()?;
        let (loss, grad_norm, lr) = (scalars[0], scalars[1], scalars[2]);
        for (i, o) in outs.iter_mut().enumerate() {
            state[at.partition_of[i]] = o.drain(..k).collect();
        }
        let dt = t.elapsed().as_secs_f64();
        if !loss.is_finite() {
            return Err(Error::Diverged { step: s, loss });
        }
        losses.push((s, loss));
        if s > start || cfg.train.steps == start + 1 {
            times.push(dt);
        }
        if s % cfg.train.log_every == 0 || s + 1 == cfg.train.steps {
            let line = serde_json::json!({
                "step": s,
                "loss": loss,
                "learning_rate": lr,
                "grad_norm": grad_norm,
                "tokens_per_second": tokens_per_step / dt,
                "step_time_s": dt,
                "mfu": flops_per_step / dt / peak,
            });
            writeln!(metrics, "{line}").map_err(|e| Error::io("writing", &metrics_path, e))?;
        }
        let every = cfg.train.checkpoint_every;
        if every > 0 && ((s + 1) % every == 0 || s + 1 == cfg.train.steps) {
            // Metrics up to the checkpoint are durable before it can commit.
            metrics
                .flush()
                .map_err(|e| Error::io("writing", &metrics_path, e))?;
            let snap = state::snapshot(cfg, &plan, &step, &state, loader.state())?;
            writer.start(snap)?;
        }
        if let Some(saved) = writer.poll()? {
            bar.suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
        }
        bar.set_message(format!("loss {loss:.4}  {:.0} tok/s", tokens_per_step / dt));
        bar.inc(1);
    }
    if let Some(saved) = writer.wait()? {
        bar.suspend(|| eprintln!("meshtrain: checkpoint step {saved} committed"));
    }
    bar.finish();
    metrics
        .flush()
        .map_err(|e| Error::io("writing", &metrics_path, e))?;
    write_file(
        &run_dir.join("loss.svg"),
        crate::plot::loss_svg(&losses, "training loss").as_bytes(),
    )?;
    if cfg.train.export_final {
        let params = state::gather_params(&plan, &step, &state)?;
        let tensors = param_specs(&model)
            .iter()
            .zip(params)
            .map(|(s, data)| gemma::hf::HostTensor {
                shape: s.shape.clone(),
                data,
            })
            .collect::<Vec<_>>();
        gemma::hf::save(
            &run_dir.join("final"),
            &model,
            &tensors,
            gemma::hf::SaveDtype::F32,
        )?;
    }
    times.sort_by(f64::total_cmp);
    Ok(RunSummary {
        losses,
        compile_seconds,
        median_step_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
        run_dir,
        peak_bytes_per_device: stats.peak_bytes,
        report,
    })
}

/// The checkpoint `train.resume` asks for, checked against the model.
fn find_resume(
    cfg: &TrainConfig,
    model: &gemma::GemmaConfig,
    root: &std::path::Path,
) -> Result<Option<checkpoint::Checkpoint>> {
    let found = match cfg.train.resume.as_str() {
        "none" => {
            if let Some((step, dir)) = checkpoint::list(root)?.pop() {
                return Err(Error::config(
                    "train",
                    "train.resume",
                    format!(
                        "\"none\", but {} holds checkpoints (newest: step {step}); set train.resume = \"auto\" \
                         to continue that run, or choose another train.run_dir",
                        dir.parent().unwrap_or(root).display()
                    ),
                ));
            }
            None
        }
        "auto" => {
            checkpoint::remove_partials(root)?;
            checkpoint::latest(root)?
        }
        dir => Some(checkpoint::Checkpoint::open(std::path::Path::new(dir))?),
    };
    if let Some(c) = &found {
        let saved = c.config()?.model.resolve()?;
        if saved != *model {
            return Err(Error::Checkpoint {
                path: c.dir.clone(),
                message: format!(
                    "was saved for another model shape: {saved:?}; this run's [model] is {model:?}"
                ),
            });
        }
    }
    Ok(found)
}

/// Opens `metrics.jsonl` for appending; on a resume from step `start` the
/// lines of steps at or after it (trained again now) are dropped first.
fn open_metrics(path: &std::path::Path, start: u64) -> Result<std::fs::File> {
    if start > 0 && path.exists() {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io("reading", path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s < start)
            })
            .map(|l| format!("{l}\n"))
            .collect();
        write_file(path, kept.as_bytes())?;
    } else {
        write_file(path, b"")?;
    }
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| Error::io("opening", path, e))
}

fn progress_bar(steps: u64, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(steps);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} ETA {eta}")
            .expect("valid template"),
    );
    bar
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io("writing", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io("renaming into", path, e))
}

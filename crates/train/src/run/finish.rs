//! Finishing a run: the loss plot (and `reward.svg`: the preference
//! objectives' margin, RL's mean reward) and the final model, written by
//! process 0.

use super::files::{earlier_losses, metric_lines, write_file};
use super::setup::Job;
use super::steps::Done;
use crate::{Error, Result, checkpoint, state};

pub(super) fn finish(job: &Job, done: &Done) -> Result<()> {
    if !job.lead {
        return Ok(());
    }
    let run_dir = &job.run_dir;
    // A resumed run's plot starts with the logged steps before it.
    let mut curve = earlier_losses(&run_dir.join("metrics.jsonl"), job.start);
    curve.extend(&done.losses);
    write_file(
        &run_dir.join("loss.svg"),
        crate::plot::loss_svg(&curve, "training loss").as_bytes(),
    )?;
    use crate::objective::Objective;
    // The margin of the preference objectives, RL's mean reward, per
    // logged step (resumed runs included).
    let (key, title) = match job.cfg.train.objective {
        Objective::Dpo => (
            "margin",
            "DPO margin: mean β·[Δ log π(chosen) − Δ log π(rejected)]",
        ),
        Objective::Reward => ("margin", "reward margin: mean r(chosen) − r(rejected)"),
        Objective::Rl => ("reward_mean", "RL: mean reward of the sampled responses"),
        Objective::Lm => ("", ""),
    };
    if !key.is_empty() {
        let points: Vec<(u64, f32)> = metric_lines(&run_dir.join("metrics.jsonl"))
            .unwrap_or_default()
            .iter()
            .filter_map(|v| Some((v["step"].as_u64()?, v[key].as_f64()? as f32)))
            .collect();
        write_file(
            &run_dir.join("reward.svg"),
            crate::plot::loss_svg(&points, title).as_bytes(),
        )?;
    }
    if !job.cfg.train.export_final {
        return Ok(());
    }
    let out = run_dir.join("final");
    if job.at.all_local() && !job.mode.is_spmd() {
        let values = state::gather_params(&job.model, &job.plan, &job.params, &job.state)?;
        let tensors = gemma::param_specs(&job.model)
            .iter()
            .zip(values)
            .map(|(s, data)| gemma::hf::HostTensor {
                shape: s.shape.clone(),
                data,
            })
            .collect::<Vec<_>>();
        gemma::hf::save(&out, &job.model, &tensors, gemma::hf::SaveDtype::F32)?;
        return Ok(());
    }
    // No host holds every parameter: process 0 reads them from the final
    // checkpoint, which every host has written its boxes of.
    let (step, dir) = checkpoint::list(&run_dir.join("checkpoints"))?
        .pop()
        .ok_or_else(|| {
            Error::config(
                "train",
                "train.export_final",
                "no checkpoint to export from",
            )
        })?;
    if step != job.cfg.train.steps {
        return Err(Error::config(
            "train",
            "train.export_final",
            format!(
                "the newest checkpoint is step {step}, not the final step {}",
                job.cfg.train.steps
            ),
        ));
    }
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(|e| Error::io("removing", &out, e))?;
    }
    checkpoint::Checkpoint::open(&dir)?.export_hf(&out, gemma::hf::SaveDtype::F32)
}

//! `weir profile`: a reference profile and a starting schema from training data.

use std::path::PathBuf;

use crate::stages::profile;

#[derive(clap::Args)]
pub struct ProfileArgs {
    /// The data: CSV with a header row, or JSON lines (.jsonl / .ndjson) of flat objects.
    pub data: PathBuf,
    /// Where to write the profile (JSON).
    #[arg(long, short, default_value = "reference.json")]
    pub output: PathBuf,
    /// Quantile bins per numeric column.
    #[arg(long, default_value_t = 10)]
    pub bins: usize,
}

pub fn run(args: ProfileArgs) -> anyhow::Result<()> {
    let profile = profile::profile_file(&args.data, args.bins)?;
    std::fs::write(&args.output, serde_json::to_string_pretty(&profile)? + "\n")?;
    eprintln!(
        "profiled {} rows, {} columns into {}",
        profile.rows,
        profile.columns.len(),
        args.output.display()
    );
    print!("{}", profile::schema_toml(&profile));
    Ok(())
}

//! `sim --scenario NAME --vcpus N --seed S --steps K [--trace FILE]`: runs
//! one scenario and prints its table; exits 1 when an invariant was
//! violated, 2 on a bad command line.

use std::io::IsTerminal;
use std::process::ExitCode;

use sim::{Config, Scenario};

const USAGE: &str = "usage: sim --scenario NAME [--vcpus N] [--seed S] [--steps K] [--trace FILE] [--quiet] [--no-forged-intr] [--host-clears-ai]
scenarios: idle-timer ipi-storm device-level boot hostile-hv hostile-guest deregister
           reinject-stall tsc-deadline handback-due level-edge";

struct Args {
    config: Config,
    trace_file: Option<String>,
    quiet: bool,
}

fn parse() -> Result<Args, String> {
    let mut scenario = None;
    let mut vcpus = 4usize;
    let mut seed = 1u64;
    let mut steps = 100_000u64;
    let mut trace_file = None;
    let mut quiet = false;
    let mut no_forged_intr = false;
    let mut host_clears_ai = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--scenario" => scenario = Some(value("--scenario")?.parse::<Scenario>()?),
            "--vcpus" => {
                vcpus = value("--vcpus")?
                    .parse()
                    .map_err(|e| format!("--vcpus: {e}"))?;
                if !(1..=512).contains(&vcpus) {
                    return Err("--vcpus must be 1..=512".into());
                }
            }
            "--seed" => {
                seed = value("--seed")?
                    .parse()
                    .map_err(|e| format!("--seed: {e}"))?
            }
            "--steps" => {
                steps = value("--steps")?
                    .parse()
                    .map_err(|e| format!("--steps: {e}"))?
            }
            "--trace" => trace_file = Some(value("--trace")?),
            "--quiet" => quiet = true,
            "--no-forged-intr" => no_forged_intr = true,
            "--host-clears-ai" => host_clears_ai = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let scenario = scenario.ok_or(format!("--scenario is required\n{USAGE}"))?;
    Ok(Args {
        config: Config {
            scenario,
            vcpus,
            seed,
            steps,
            trace: trace_file.is_some(),
            progress: true,
            no_forged_intr,
            sabotage: None,
            host_clears_ai,
        },
        trace_file,
        quiet,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let steps = args.config.steps;
    let bar = (std::io::stderr().is_terminal() && steps >= 200_000 && !args.quiet).then(|| {
        let bar = indicatif::ProgressBar::new(steps);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} steps ({eta})",
        ) {
            bar.set_style(style);
        }
        bar
    });
    let title = args.config.title();
    let outcome = sim::run(args.config, |done| {
        if let Some(bar) = bar.as_ref() {
            bar.set_position(done);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    print!("{}", outcome.stats.report(&title));
    if let (Some(file), Some(json)) = (args.trace_file, outcome.trace) {
        if let Err(e) = std::fs::write(&file, json) {
            eprintln!("cannot write {file}: {e}");
            return ExitCode::from(2);
        }
        println!("  trace written to {file} (open in ui.perfetto.dev or chrome://tracing)");
    }
    if outcome.stats.violations != 0 {
        println!("FAILED: replay with the same --scenario/--vcpus/--seed/--steps");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

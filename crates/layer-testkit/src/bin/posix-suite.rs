//! `posix-suite prepare-base DIR` creates the suite's base tree in DIR; `posix-suite run DIR` runs every
//! check in DIR (which must hold the base tree, directly or through a lower layer) and prints one line per
//! check. Exit status 1 if any check failed, 2 on a usage error.

use std::path::Path;
use std::process::ExitCode;

use layer_testkit::posix_suite;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["prepare-base", dir] => match posix_suite::prepare_base(Path::new(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("prepare-base {dir}: {e}");
                ExitCode::FAILURE
            }
        },
        ["run", dir] => {
            let outcomes = posix_suite::run(Path::new(dir));
            for o in &outcomes {
                match &o.result {
                    Ok(()) => println!("ok    {}", o.name),
                    Err(e) => println!("FAIL  {}: {e}", o.name),
                }
            }
            let failed = posix_suite::failed(&outcomes);
            println!("{} checks, {} failed", outcomes.len(), failed.len());
            if failed.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => {
            eprintln!("usage: posix-suite prepare-base DIR | posix-suite run DIR");
            ExitCode::from(2)
        }
    }
}

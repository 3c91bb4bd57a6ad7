//! `thinnode completions SHELL` and `thinnode man`: shell completion scripts and man pages generated
//! from the command-line definition, so they never drift from `--help`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::CommandFactory;

/// Arguments of `thinnode completions`.
#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell (bash, zsh, fish, elvish, powershell).
    shell: clap_complete::Shell,
}

/// Prints the completion script of `shell` to stdout.
pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "thinnode", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .context("write the completion script")
}

/// Arguments of `thinnode man`.
#[derive(clap::Args)]
pub struct ManArgs {
    /// Write thinnode.1 and one page per command (thinnode-node.1, …) into this directory instead of
    /// printing thinnode(1).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

/// Prints thinnode(1), or writes every page into a directory.
pub fn man(args: ManArgs) -> anyhow::Result<()> {
    let mut cmd = crate::Cli::command();
    cmd.build();
    let Some(dir) = args.out else {
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(cmd).render(&mut out)?;
        return out.flush().context("write the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let mut pages = vec![("thinnode".to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("thinnode-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("thinnode {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page).render(&mut buf)?;
        std::fs::write(&path, buf).with_context(|| format!("write {}", path.display()))?;
        writeln!(std::io::stdout(), "{}", path.display())?;
    }
    Ok(())
}

//! `thinnode key`: ed25519 signing keys for images.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// Arguments of `thinnode key`.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: KeyCommand,
}

#[derive(clap::Subcommand)]
enum KeyCommand {
    /// Generate a key pair: PATH (secret, mode 0600) and PATH.pub (public, for `--trust`).
    Gen {
        /// Where to write the secret key; the public key goes to PATH.pub.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the public key (hex) of a secret or public key file.
    Show {
        /// A key file written by `thinnode key gen`.
        path: PathBuf,
    },
}

/// Runs `thinnode key`.
pub fn run(args: Args) -> anyhow::Result<()> {
    match args.command {
        KeyCommand::Gen { out } => {
            let public = image::write_key_pair(&out)
                .with_context(|| format!("generating a key pair at {}", out.display()))?;
            println!("secret key: {}", out.display());
            println!("public key: {}.pub", out.display());
            println!("public key (hex): {}", hex_of(public.as_bytes()));
        }
        KeyCommand::Show { path } => {
            let public = match image::read_verifying_key(&path) {
                Ok(k) => k,
                Err(_) => image::read_signing_key(&path)
                    .with_context(|| format!("reading key file {}", path.display()))?
                    .verifying_key(),
            };
            println!("{}", hex_of(public.as_bytes()));
        }
    }
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the secret key of a `--sign KEY` option, if one was given.
pub(crate) fn read_signer(path: Option<&Path>) -> anyhow::Result<Option<image::SigningKey>> {
    path.map(|p| image::read_signing_key(p).with_context(|| format!("reading {}", p.display())))
        .transpose()
}

//! What a packager expects of the binary: `--version` names the git commit it was built from, shell
//! completions for bash, zsh and fish, and man pages (one per command) generated from the same
//! definitions as `--help`.

mod common;

use common::{ok_stdout, run, text};

#[test]
fn version_names_the_commit() {
    let version = ok_stdout(&["--version"]);
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    assert!(
        version.starts_with(&format!("thinnode {} (git ", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    // Built from a checkout: the commit is HEAD's (a tarball build says what THINNODE_GIT_COMMIT gave).
    if let Some(commit) = commit {
        assert!(version.contains(&commit), "{version} lacks {commit}");
    }
}

#[test]
fn completions_cover_every_shell_and_command() {
    for (shell, marker) in [
        ("bash", "complete -F _thinnode"),
        ("zsh", "#compdef thinnode"),
        ("fish", "complete -c thinnode"),
    ] {
        let script = ok_stdout(&["completions", shell]);
        assert!(
            script.contains(marker),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        for command in ["zdb", "pack", "mount", "node", "enable", "completions"] {
            assert!(script.contains(command), "{shell} completes {command}");
        }
    }
    let bad = run(&["completions", "tcsh"]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("tcsh"), "{}", text(&bad));
}

#[test]
fn man_pages_for_the_tool_and_each_command() {
    let page = ok_stdout(&["man"]);
    assert!(
        page.starts_with(".ie \\n(.g .ds Aq") || page.contains(".TH thinnode 1"),
        "{page}"
    );
    let tmp = tempfile::tempdir().expect("tempdir");
    let listed = ok_stdout(&["man", "--out", tmp.path().to_str().expect("utf-8")]);
    for name in [
        "thinnode",
        "thinnode-node",
        "thinnode-zdb",
        "thinnode-mount",
    ] {
        let path = tmp.path().join(format!("{name}.1"));
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}.1: {e}"));
        assert!(body.contains(&format!(".TH {name} 1")), "{name}.1 heading");
        assert!(listed.contains(path.to_str().expect("utf-8")));
    }
    let node = std::fs::read_to_string(tmp.path().join("thinnode-node.1")).expect("node page");
    assert!(node.contains("enable") && node.contains("start"));
    assert!(!listed.contains("supervise"), "hidden commands get no page");
}

//! The command line as a new user meets it: `--help` and `--version` on every command and
//! subcommand (found by walking the help itself, so a new command is covered the day it is
//! added), errors that name the bad flag or value with exit status 2, and shell completions.

use std::process::{Command, Output};

use sluice_tests::sluice_binary;

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_binary())
        .args(args)
        .output()
        .expect("run sluice")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The subcommands a help text lists under "Commands:" (clap's own `help` left out).
fn subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(String::from)
        .collect()
}

#[test]
fn every_command_answers_help_and_version() {
    let mut pending: Vec<Vec<String>> = vec![vec![]];
    let mut seen = Vec::new();
    while let Some(path) = pending.pop() {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let out = sluice(&args);
        let help = text(&out.stdout);
        assert!(
            out.status.success() && help.contains("Usage: sluice"),
            "sluice {args:?}: {}{}",
            help,
            text(&out.stderr)
        );
        args.pop();
        args.push("--version");
        let out = sluice(&args);
        assert!(out.status.success(), "sluice {args:?}");
        // clap names the subcommand: `sluice-topic-create 0.1.0`.
        let version = text(&out.stdout);
        assert!(
            version.starts_with("sluice")
                && version
                    .trim()
                    .ends_with(&format!(" {}", env!("CARGO_PKG_VERSION"))),
            "sluice {args:?}: {version}"
        );
        for sub in subcommands(&help) {
            let mut deeper = path.clone();
            deeper.push(sub);
            pending.push(deeper);
        }
        seen.push(path.join(" "));
    }
    for expected in [
        "serve",
        "topic create",
        "group reset-offsets",
        "cluster dev",
        "log verify",
        "bench failover",
        "chaos run",
        "completions",
    ] {
        assert!(
            seen.iter().any(|s| s == expected),
            "{expected} not in {seen:?}"
        );
    }
    // Every flag of `serve` names its environment variable.
    let serve = text(&sluice(&["serve", "--help"]).stdout);
    assert!(
        serve.contains("--data-dir") && serve.contains("[env: SLUICE_DATA_DIR]"),
        "{serve}"
    );
}

#[test]
fn bad_flags_and_values_are_named_with_exit_status_2() {
    for (args, named) in [
        (
            &["topic", "create", "t", "--partitons", "3"][..],
            "--partitons",
        ),
        (&["produce", "t", "--acks", "2"][..], "--acks"),
        (&["consume", "t", "--count", "many"][..], "--count"),
        (&["cluster", "dev", "--nodes", "12"][..], "--nodes"),
        (&["bench", "failover", "--kils", "3"][..], "--kils"),
        (&["chaos", "run", "--seed", "x"][..], "--seed"),
        (&["nonsense"][..], "nonsense"),
        (
            &["serve", "--otlp-endpoint", "grpc://127.0.0.1:4317"][..],
            "otlp_endpoint",
        ),
        (
            &["serve", "--client-metrics-interval-ms", "5"][..],
            "client_metrics_interval_ms",
        ),
    ] {
        let out = sluice(args);
        assert_eq!(out.status.code(), Some(2), "sluice {args:?}");
        let err = text(&out.stderr);
        assert!(err.contains(named), "sluice {args:?}: {err}");
    }
    // A command that runs and fails exits 1 with its error.
    let out = sluice(&["topic", "list", "--bootstrap", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("sluice topic: "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = sluice(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("sluice") && script.contains("reset-offsets"),
            "{shell}: {script}"
        );
        if shell == "bash" {
            // The script is valid bash.
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("sluice.bash");
            std::fs::write(&path, &script).unwrap();
            let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
            assert!(check.status.success(), "{}", text(&check.stderr));
        }
    }
}

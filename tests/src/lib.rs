//! # sluice-tests: black-box tests
//!
//! Tests here start the `sluice` binary as a user would and talk to it from outside: through its
//! command line today, through the Kafka protocol with real clients once the broker exists.
//! This library holds what those tests share.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// Path of the `sluice` binary, built first (once per test process) with the same profile as
/// the tests, so `cargo test -p sluice-tests` works on its own.
pub fn sluice_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let release = !cfg!(debug_assertions);
            let mut build = Command::new(cargo);
            build
                .current_dir(&workspace)
                .args(["build", "--quiet", "--bin", "sluice"]);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building the sluice binary failed");
            let target = std::env::var("CARGO_TARGET_DIR")
                .map_or_else(|_| workspace.join("target"), PathBuf::from);
            target
                .join(if release { "release" } else { "debug" })
                .join("sluice")
        })
        .clone()
}

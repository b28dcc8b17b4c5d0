//! The profile-guided build (`scripts/pgo-build.sh`, what the container image
//! runs) trains on the repository's own workload: every test suite, the
//! bundled policies over gRPC and plain HTTP, the OAuth MCP gateway example
//! with minted tokens and a JWKS on loopback, the floor. Each training
//! request's answer is asserted by the script, so a changed example or policy
//! that the training no longer matches would break the image's build. The
//! two release builds take too long for a test; the training itself runs
//! here (`TRAIN_ONLY`) on the debug binaries, one second per request.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The debug build's directory, with the examples the training needs built
/// by `./scripts/test.sh` (`cargo build --example floor ...`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    for example in ["floor", "make_request", "check_once", "mint_token"] {
        let bin = dir.join("examples").join(example);
        assert!(
            bin.is_file(),
            "{} is missing: build it with `cargo build --example {example}` \
             (./scripts/test.sh does)",
            bin.display()
        );
    }
    dir
}

#[test]
fn the_pgo_training_runs_and_every_training_request_gets_its_expected_answer() {
    let dir = profile_dir();
    let celgate = PathBuf::from(env!("CARGO_BIN_EXE_celgate"));
    assert_eq!(
        celgate.parent().unwrap(),
        dir,
        "celgate beside the examples"
    );
    // TRAIN_ONLY relative to where the script is started, as a user types it.
    let out = Command::new("bash")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/pgo-build.sh"))
        .current_dir(dir.parent().unwrap())
        .env("TRAIN_ONLY", dir.file_name().unwrap())
        .env("TRAIN_SECONDS", "1")
        .env("SUITE_ROUNDS", "1")
        .env("TRAIN_CONNS", "4")
        .env("TRAIN_STREAMS", "4")
        .output()
        .expect("bash scripts/pgo-build.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "training failed:\n{stderr}");
    for stage in [
        "== training: every test suite, 1 times",
        "== training: bundled policies over gRPC",
        "== training: the floor over gRPC",
        "== training: bundled policies over plain HTTP",
        "== training: the OAuth MCP gateway over gRPC",
        "== training done",
    ] {
        assert!(stderr.contains(stage), "no '{stage}' in:\n{stderr}");
    }
    assert!(
        !stderr.contains("instrumented build") && !stderr.contains("merging"),
        "TRAIN_ONLY builds nothing:\n{stderr}"
    );
}

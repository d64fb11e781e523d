//! The `sluice` binary as a user meets it: start-up errors are clear messages with a non-zero exit, never panics.

use std::process::Command;

fn sluice() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd.output().expect("sluice runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_missing_or_wrong_onnx_runtime_library_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libonnxruntime.so");
    std::fs::write(&junk, b"not a library").unwrap();
    let not_ort = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"].into_iter().find(|p| std::path::Path::new(p).exists());
    let mut cases = vec![(dir.path().join("missing.so").display().to_string(), "no ONNX Runtime library"), (junk.display().to_string(), "failed to load")];
    if let Some(libc) = not_ort {
        cases.push((libc.to_string(), "OrtGetApiBase"));
    }
    for (path, words) in cases {
        let (code, stdout, stderr) = run(sluice().args(["serve", "--http", "127.0.0.1:0"]).env("ORT_DYLIB_PATH", &path));
        assert_eq!(code, 1, "{path}: {stderr}");
        assert!(stdout.is_empty(), "{path}: printed {stdout}");
        assert!(stderr.contains(words) && stderr.contains("scripts/setup.sh"), "{path}: {stderr}");
        assert!(!stderr.contains("panicked"), "{path}: {stderr}");
    }
}

#[test]
fn bad_configuration_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(&config, "[server]\nmax_body_bytes = 0\n").unwrap();
    let (code, _, stderr) = run(sluice().args(["serve", "--config"]).arg(&config));
    assert_eq!(code, 1);
    assert!(stderr.contains("server.max_body_bytes") && stderr.contains("sluice.toml"), "{stderr}");

    std::fs::write(&config, "[server]\nhttp_port = 1\n").unwrap();
    let (code, _, stderr) = run(sluice().args(["serve", "--config"]).arg(&config));
    assert_eq!(code, 1);
    assert!(stderr.contains("http_port"), "{stderr}");

    // A model.toml that asks a fixed-shape model to batch.
    let repo = dir.path().join("models");
    std::fs::create_dir_all(repo.join("fixed/1")).unwrap();
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/models/fixed_affine/1/model.onnx"), repo.join("fixed/1/model.onnx")).unwrap();
    std::fs::write(repo.join("fixed/model.toml"), "max_batch_size = 4\n").unwrap();
    let (code, _, stderr) = run(sluice().args(["serve", "--http", "127.0.0.1:0", "--models"]).arg(&repo));
    assert_eq!(code, 1);
    assert!(stderr.contains("max_batch_size") && stderr.contains("model.toml"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn models_lists_every_model_with_its_signature() {
    let (code, stdout, stderr) = run(sluice().args(["models"]));
    assert_eq!(code, 0, "{stderr}");
    for needle in ["fraud_mlp:1", "fraud_mlp:2", "wide:1", "recommender:1", "identity:1", "fixed_affine:1", "all_types:1", "item_ids", "INT64"] {
        assert!(stdout.contains(needle), "missing {needle} in:\n{stdout}");
    }
}

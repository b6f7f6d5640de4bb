//! Builds the guest workspace `plugins/` for `wasm32-wasip2` into this
//! crate's OUT_DIR and writes the component paths as constants, so tests use
//! real compiled plugins (the pattern of wasmtime's test-programs).

use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const GUESTS: &[(&str, &str)] = &[
    ("LOG_RESPONSE", "log_response"),
    ("JSON_ERROR", "json_error"),
    ("BACKOFF_POLICY", "backoff_policy"),
    ("TRAP", "fixture_trap"),
    ("SPIN", "fixture_spin"),
    ("MEMORY_BOMB", "fixture_memory_bomb"),
];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../..");
    let plugins = root.join("plugins");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed={}", plugins.display());
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

    ensure_target();
    let target_dir = out.join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&plugins)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir)
        // The host build's flags are not for the guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .expect("cannot run cargo to build the plugin guests");
    assert!(
        status.success(),
        "building the guests in plugins/ for {TARGET} failed"
    );

    let mut constants = String::new();
    for (constant, artifact) in GUESTS {
        let path = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{artifact}.wasm"));
        assert!(path.exists(), "{} was not built", path.display());
        constants.push_str(&format!(
            "pub const {constant}: &str = {:?};\n",
            path.display().to_string()
        ));
    }
    std::fs::write(out.join("paths.rs"), constants).expect("cannot write paths.rs");
}

/// The target is pinned in rust-toolchain.toml, but rustup does not add a
/// missing target to an installed toolchain when auto-install is off.
fn ensure_target() {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == TARGET)
        })
        .unwrap_or(false);
    if !installed {
        let added = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status();
        assert!(
            added.is_ok_and(|s| s.success()),
            "the {TARGET} target is missing and `rustup target add {TARGET}` failed"
        );
    }
}

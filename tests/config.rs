//! Config golden tests: every `tests/config/invalid/NAME.toml` fails with
//! exactly the message in `NAME.err`; the shipped examples are valid; and
//! `wharf check` reports both through its exit code.
//!
//! After an intended change of wording, `WHARF_BLESS=1 cargo test --test config`
//! rewrites the `.err` files; review the diff before committing it.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::path::{Path, PathBuf};

use support::wharf_check;

use wharf::config::Config;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn error_of(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).unwrap();
    Config::parse(&text)
        .and_then(Config::validate)
        .err()
        .map(|e| e.to_string())
}

#[test]
fn invalid_configs_fail_with_their_golden_message() {
    let dir = root().join("tests/config/invalid");
    let bless = std::env::var_os("WHARF_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 10, "only {} golden cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let golden = case.with_extension("err");
        let Some(got) = error_of(case) else {
            failures.push(format!(
                "{}: accepted, but it is in invalid/",
                case.display()
            ));
            continue;
        };
        if bless {
            std::fs::write(&golden, format!("{got}\n")).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want.trim_end() != got {
            failures.push(format!(
                "{}:\n--- want\n{}\n--- got\n{got}",
                case.display(),
                want.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let mut found = 0;
    for entry in std::fs::read_dir(root().join("examples")).unwrap() {
        let dir = entry.unwrap().path();
        for file in std::fs::read_dir(&dir).unwrap() {
            let path = file.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml")
                && path.file_name() != Some("Cargo.toml".as_ref())
            {
                assert_eq!(error_of(&path), None, "{}", path.display());
                found += 1;
            }
        }
    }
    assert!(found > 0, "no example configs found");
}

#[test]
fn wharf_check_exits_non_zero_naming_the_key() {
    let (ok, _, stderr) = wharf_check(&root().join("tests/config/invalid/unknown_key_typo.toml"));
    assert!(!ok);
    assert!(stderr.contains("max_redelivery"), "{stderr}");

    let (ok, stdout, stderr) = wharf_check(&root().join("examples/reliable-delivery/wharf.toml"));
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok"));

    let (ok, _, stderr) = wharf_check(Path::new("/no/such/file.toml"));
    assert!(!ok);
    assert!(stderr.contains("/no/such/file.toml"));
}

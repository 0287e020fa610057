//! The `shardgate` command line, run as the built binary: help, version, argument
//! errors (exit code 2) and `vschema check`.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Output};

fn shardgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run the shardgate binary")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_every_subcommand() {
    let out = shardgate(&["--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for command in ["serve", "demo", "vschema"] {
        assert!(
            help.contains(command),
            "--help should list {command}:\n{help}"
        );
    }
}

#[test]
fn serve_help_shows_its_flags() {
    let out = shardgate(&["serve", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in ["--config", "--vschema", "--listen", "--user"] {
        assert!(
            help.contains(flag),
            "serve --help should show {flag}:\n{help}"
        );
    }
}

#[test]
fn demo_help_shows_its_flags_and_defaults() {
    let out = shardgate(&["demo", "--help"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let help = stdout(&out);
    for flag in [
        "--listen",
        "--workspaces",
        "--base-port",
        "--vschema",
        "--standbys",
        "15306",
    ] {
        assert!(
            help.contains(flag),
            "demo --help should show {flag}:\n{help}"
        );
    }
}

#[test]
fn version_prints_the_crate_version() {
    let out = shardgate(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out).trim(),
        format!("shardgate {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn an_unknown_flag_exits_2_naming_it() {
    let out = shardgate(&["serve", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--no-such-flag"), "{}", stderr(&out));
}

#[test]
fn argument_errors_exit_2_with_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&["serve"], "--config"),
        (&["serve", "--vschema", "vschema/demo.toml"], "--user"),
        (
            &["serve", "--vschema", "vschema/demo.toml", "--user", "app"],
            "NAME:PASSWORD",
        ),
        (
            &["serve", "--config", "shardgate.toml", "--user", "app:app"],
            "cannot be used with",
        ),
        (&["demo", "--base-port", "seventy"], "--base-port"),
        (&["demo", "--listen", "not-an-address"], "--listen"),
        (&["no-such-command"], "no-such-command"),
        (&["vschema", "check"], "FILE"),
    ];
    for (args, expected) in cases {
        let out = shardgate(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{args:?} should mention {expected}:\n{}",
            stderr(&out)
        );
    }
}

#[test]
fn vschema_check_accepts_the_demo_map() {
    let out = shardgate(&["vschema", "check", "vschema/demo.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("vschema/demo.toml: ok"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn vschema_check_rejects_a_broken_map_naming_the_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[clusters.c1]\nprimary = \"127.0.0.1:3306\"\nuser = \"u\"\npassword = \"p\"\n\n\
         [keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\n\
         shards = [\n  { name = \"-80\", cluster = \"c1\" },\n  { name = \"80-\", cluster = \"c9\" },\n]\n",
    )
    .expect("write the broken vschema");
    let file = path.to_string_lossy().into_owned();
    let out = shardgate(&["vschema", "check", &file]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&file),
        "the error should name the file:\n{err}"
    );
    assert!(
        err.contains("unknown cluster \"c9\""),
        "the error should name the unknown cluster:\n{err}"
    );
}

//! The built-in program handler and break commands, with real processes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vigil_client::{CommandHandler, ProgramHandler, ProgramSpec};

fn spec(program: &str, args: &[&str], shell: bool, timeout: f64) -> ProgramSpec {
    serde_json::from_value(
        json!({"program": program, "args": args, "shell": shell, "timeout": timeout}),
    )
    .expect("spec")
}

fn handler() -> ProgramHandler {
    let mut programs = BTreeMap::new();
    programs.insert(
        "echo".to_owned(),
        spec("echo", &["hello", "world"], false, 5.0),
    );
    // Reads its args as JSON from stdin.
    programs.insert("stdin".to_owned(), spec("cat", &[], false, 5.0));
    programs.insert(
        "env".to_owned(),
        spec(
            "printf '%s|%s' \"$VIGIL_COMMAND\" \"$VIGIL_ARGS\"",
            &[],
            true,
            5.0,
        ),
    );
    programs.insert(
        "fails".to_owned(),
        spec("echo broken >&2; exit 3", &[], true, 5.0),
    );
    programs.insert("hangs".to_owned(), spec("sleep", &["30"], false, 0.3));
    programs.insert(
        "missing".to_owned(),
        spec("/nonexistent/program", &[], false, 5.0),
    );
    // Without a shell, shell syntax is just an argument.
    programs.insert(
        "noshell".to_owned(),
        spec("echo", &["$(id -u); rm -rf /"], false, 5.0),
    );
    ProgramHandler::new(programs)
}

async fn run(command: &str, args: Value) -> Result<Value, String> {
    handler().execute(command, &args).await
}

#[tokio::test]
async fn programs_run_with_their_fixed_arguments() {
    assert_eq!(run("echo", json!(null)).await, Ok(json!("hello world")));
    assert_eq!(
        run("noshell", json!(null)).await,
        Ok(json!("$(id -u); rm -rf /"))
    );
}

#[tokio::test]
async fn args_reach_the_program_as_json_on_stdin_and_in_the_environment() {
    let args = json!({"delay": 5, "who": "ops"});
    // `cat` echoes the JSON back, which is parsed as JSON again.
    assert_eq!(run("stdin", args.clone()).await, Ok(args.clone()));
    let out = run("env", args).await.expect("runs");
    let text = out.as_str().expect("text");
    let (name, json_args) = text.split_once('|').expect("two parts");
    assert_eq!(name, "env");
    assert_eq!(
        serde_json::from_str::<Value>(json_args).expect("json"),
        json!({"delay": 5, "who": "ops"})
    );
}

#[tokio::test]
async fn failures_timeouts_and_unknown_commands_are_errors() {
    let err = run("fails", json!(null)).await.expect_err("fails");
    assert!(err.contains("broken") && err.contains('3'), "{err}");
    let start = Instant::now();
    let err = run("hangs", json!(null)).await.expect_err("hangs");
    assert!(err.contains("timeout") && err.contains("killed"), "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "the program was killed, not waited for"
    );
    let err = run("missing", json!(null)).await.expect_err("missing");
    assert!(err.contains("cannot start"), "{err}");
    let err = run("nope", json!(null)).await.expect_err("unknown");
    assert!(err.contains("no program is configured"), "{err}");
}

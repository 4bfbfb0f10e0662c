//! Running verified commands: the [`CommandHandler`] trait and the built-in
//! [`ProgramHandler`].

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Largest output kept from a program, per stream.
const MAX_OUTPUT: usize = 64 * 1024;

/// Runs commands that passed verification: the Rust form of FailsafeAPI's
/// `BaseFailsafeClient.execute_command`. Link `vigil-client` and pass your
/// own handler to plug in behaviour.
///
/// ```
/// use futures_util::future::BoxFuture;
/// use serde_json::{Value, json};
/// use vigil_client::CommandHandler;
///
/// #[derive(Debug)]
/// struct MyClient;
///
/// impl CommandHandler for MyClient {
///     fn execute<'a>(&'a self, command: &'a str, args: &'a Value) -> BoxFuture<'a, Result<Value, String>> {
///         Box::pin(async move {
///             match command {
///                 "shutdown" => Ok(json!({"shutting_down": true, "delay": args["delay"]})),
///                 other => Err(format!("Unknown command: {other}")),
///             }
///         })
///     }
/// }
/// ```
pub trait CommandHandler: Send + Sync + std::fmt::Debug {
    /// Runs `command` with `args`; the result or the error goes back to the
    /// server in the acknowledgement. The caller bounds the run time.
    fn execute<'a>(
        &'a self,
        command: &'a str,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>>;
}

/// A [`CommandHandler`] made from a closure, by [`handler_fn`].
pub struct FnHandler<F> {
    f: F,
}

impl<F> std::fmt::Debug for FnHandler<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnHandler").finish_non_exhaustive()
    }
}

/// A handler from an async closure that takes the command's name and
/// arguments:
///
/// ```
/// use vigil_client::{Value, handler_fn};
///
/// let handler = handler_fn(|command: String, _args: Value| async move {
///     Ok(Value::String(format!("ran {command}")))
/// });
/// # let _: std::sync::Arc<dyn vigil_client::CommandHandler> = std::sync::Arc::new(handler);
/// ```
pub fn handler_fn<F, Fut>(f: F) -> FnHandler<F>
where
    F: Fn(String, Value) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
{
    FnHandler { f }
}

impl<F, Fut> CommandHandler for FnHandler<F>
where
    F: Fn(String, Value) -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Value, String>> + Send + 'static,
{
    fn execute<'a>(
        &'a self,
        command: &'a str,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin((self.f)(command.to_owned(), args.clone()))
    }
}

/// How to run one command name as a program.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProgramSpec {
    /// The program (a path, or a name looked up in `PATH`). With `shell`,
    /// a shell command line instead.
    pub program: String,
    /// Fixed arguments given to the program.
    #[serde(default)]
    pub args: Vec<String>,
    /// Run `program` with `sh -c` (off by default: no shell, no injection).
    #[serde(default)]
    pub shell: bool,
    /// Seconds the program may run before it is killed.
    #[serde(default = "default_program_timeout")]
    pub timeout: f64,
}

fn default_program_timeout() -> f64 {
    30.0
}

/// The built-in handler: maps command names to programs.
///
/// The command's `args` are given to the program as JSON, on its standard
/// input and in the `VIGIL_ARGS` environment variable (with the command
/// name in `VIGIL_COMMAND`). Exit status 0 is success and the result is
/// the program's standard output (parsed as JSON when it is JSON, else a
/// string); anything else is a failure with its standard error. A program
/// that outlives its timeout is killed.
#[derive(Debug, Clone, Default)]
pub struct ProgramHandler {
    programs: BTreeMap<String, ProgramSpec>,
}

impl ProgramHandler {
    /// A handler for these command names.
    pub fn new(programs: BTreeMap<String, ProgramSpec>) -> Self {
        ProgramHandler { programs }
    }

    /// The command names it knows.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.programs.keys().map(String::as_str)
    }
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

impl CommandHandler for ProgramHandler {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            let spec = self
                .programs
                .get(command)
                .ok_or_else(|| format!("no program is configured for command {command:?}"))?;
            let json = args.to_string();
            let mut cmd = if spec.shell {
                let mut c = tokio::process::Command::new("sh");
                c.arg("-c").arg(&spec.program).arg("vigil").args(&spec.args);
                c
            } else {
                let mut c = tokio::process::Command::new(&spec.program);
                c.args(&spec.args);
                c
            };
            cmd.env("VIGIL_COMMAND", command)
                .env("VIGIL_ARGS", &json)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let mut child = cmd
                .spawn()
                .map_err(|e| format!("cannot start {:?}: {e}", spec.program))?;
            if let Some(mut stdin) = child.stdin.take() {
                // A program that does not read its input is not an error.
                let _ = stdin.write_all(json.as_bytes()).await;
            }
            let stdout = child.stdout.take();
            let stderr = child.stderr.take();
            let timeout =
                Duration::try_from_secs_f64(spec.timeout).unwrap_or(Duration::from_secs(30));
            let run = async {
                let (out, err, status) = tokio::join!(
                    async {
                        match stdout {
                            Some(s) => read_capped(s).await,
                            None => Vec::new(),
                        }
                    },
                    async {
                        match stderr {
                            Some(s) => read_capped(s).await,
                            None => Vec::new(),
                        }
                    },
                    child.wait()
                );
                (out, err, status)
            };
            let (out, err, status) = tokio::time::timeout(timeout, run).await.map_err(|_| {
                format!("{command:?} ran past its {timeout:?} timeout and was killed")
            })?;
            let status = status.map_err(|e| format!("waiting for {command:?}: {e}"))?;
            let text = String::from_utf8_lossy(&out).trim_end().to_owned();
            if status.success() {
                Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
            } else {
                let err = String::from_utf8_lossy(&err).trim_end().to_owned();
                Err(format!(
                    "{command:?} failed ({status}){}",
                    if err.is_empty() {
                        String::new()
                    } else {
                        format!(": {err}")
                    }
                ))
            }
        })
    }
}

/// A command run when the failsafe fires (FailsafeAPI's `break_commands`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakCommand {
    /// Command name, given to the handler.
    pub command: String,
    /// Its arguments.
    #[serde(default)]
    pub args: Value,
    /// Seconds it may run.
    #[serde(default = "default_program_timeout")]
    pub timeout: f64,
}

/// Runs the break commands in order, each with its own timeout; one
/// failing does not stop the rest. Returns each outcome.
pub(crate) async fn run_break_commands(
    handler: &dyn CommandHandler,
    commands: &[BreakCommand],
) -> Vec<vigil_proto::BreakOutcome> {
    let mut outcomes = Vec::with_capacity(commands.len());
    for bc in commands {
        let timeout = Duration::try_from_secs_f64(bc.timeout).unwrap_or(Duration::from_secs(30));
        let outcome =
            match tokio::time::timeout(timeout, handler.execute(&bc.command, &bc.args)).await {
                Ok(Ok(result)) => (true, result_text(&result)),
                Ok(Err(e)) => (false, e),
                Err(_) => (false, format!("timed out after {timeout:?}")),
            };
        if outcome.0 {
            tracing::warn!(command = %bc.command, result = %outcome.1, "break command done");
        } else {
            tracing::error!(command = %bc.command, error = %outcome.1, "break command failed");
        }
        outcomes.push(vigil_proto::BreakOutcome {
            command: bc.command.clone(),
            ok: outcome.0,
            detail: outcome.1,
        });
    }
    outcomes
}

fn result_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

//! The REST subcommands: `send`, `relay`, `emergency-shutdown` and the
//! listings.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::api::{Api, ApiArgs, print_json};
use crate::sign::{self, CommandFlags};

/// Time allowed for a request beyond what the server is asked to wait.
const SLACK: Duration = Duration::from_secs(30);

/// `?wait=SECS`, and the matching request timeout.
fn wait_query(wait: Option<f64>) -> anyhow::Result<(String, Duration)> {
    match wait {
        None => Ok((String::new(), SLACK)),
        Some(secs) => {
            let d = Duration::try_from_secs_f64(secs)
                .with_context(|| format!("--wait must be a number of seconds, got {secs}"))?;
            Ok((format!("?wait={secs}"), d + SLACK))
        }
    }
}

/// With `--wait`: an error naming each client that did not report `done`.
fn check_results(answer: &Value) -> anyhow::Result<()> {
    let Some(results) = answer.get("results").and_then(Value::as_array) else {
        return Ok(());
    };
    let mut bad = Vec::new();
    for r in results {
        let status = r.get("status").and_then(Value::as_str).unwrap_or("?");
        if status != "done" {
            let client = r.get("client").and_then(Value::as_str).unwrap_or("?");
            let detail = r.get("detail").and_then(Value::as_str).unwrap_or("");
            let what = match (status, detail.is_empty()) {
                ("pending", _) => "pending: no answer within --wait".to_owned(),
                (s, true) => s.to_owned(),
                (s, false) => format!("{s}: {detail}"),
            };
            bad.push(format!("client {client} {what}"));
        }
    }
    if results.is_empty() {
        bail!("no client received the command");
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(())
}

/// `vigilctl send`.
pub(crate) fn send(
    api: &ApiArgs,
    command: &str,
    args: Option<&str>,
    client: Option<String>,
    wait: Option<f64>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let args: Value = match args {
        Some(a) => serde_json::from_str(a).with_context(|| format!("--args is not JSON: {a:?}"))?,
        None => Value::Null,
    };
    let mut body = json!({"command": command, "args": args});
    if let Value::Object(map) = &mut body {
        if let Some(c) = client {
            map.insert("client_id".into(), json!(c));
        }
        if let Some(r) = reason {
            map.insert("reason".into(), json!(r));
        }
    }
    let (query, timeout) = wait_query(wait)?;
    let client = Api::with_token(api, timeout)?;
    let answer = client
        .post(&format!("/send{query}"), body.to_string().as_bytes())?
        .into_success()?;
    print_json(&answer);
    if wait.is_some() {
        check_results(&answer)?;
    }
    Ok(())
}

/// `vigilctl relay`.
pub(crate) fn relay(api: &ApiArgs, file: &Path, wait: Option<f64>) -> anyhow::Result<()> {
    let body = sign::read_input(file)?;
    let (query, timeout) = wait_query(wait)?;
    let client = Api::with_token(api, timeout)?;
    let answer = client
        .post(&format!("/v1/commands{query}"), &body)?
        .into_success()?;
    print_json(&answer);
    if wait.is_some() {
        check_results(&answer)?;
    }
    Ok(())
}

/// `vigilctl clients`, `modules`, `command ID`.
pub(crate) fn get(api: &ApiArgs, path: &str) -> anyhow::Result<()> {
    let client = Api::with_token(api, SLACK)?;
    print_json(&client.get(path)?.into_success()?);
    Ok(())
}

/// `vigilctl emergency-shutdown`.
pub(crate) fn emergency_shutdown(
    base: &str,
    key: &Path,
    fields: &CommandFlags,
) -> anyhow::Result<()> {
    let key = sign::load_key(key)?;
    let command = sign::sign(fields.build("emergency shutdown (vigilctl)")?, &key)?;
    eprintln!(
        "vigilctl: posting SHUTDOWN_NOW {} (wa_id {}, target {})",
        command.body.command_id,
        command.body.wa_id,
        command
            .body
            .target_agent_id
            .as_deref()
            .unwrap_or("every agent")
    );
    // The server waits for clients' acknowledgements and its own shutdown
    // before it answers.
    let client = Api::new(base, None, Duration::from_secs(60))?;
    let answer = client.post("/emergency/shutdown", command.to_json().as_bytes())?;
    print_json(&answer.body);
    if !answer.is_success() {
        bail!(
            "the server refused the shutdown: {}: {}",
            crate::api::status_text(answer.status),
            answer.detail()
        );
    }
    Ok(())
}

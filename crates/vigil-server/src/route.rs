//! Where a command goes: one resolution of `target_agent_id` and
//! `target_tree_path` (CIRIS's fields) for every route that sends one.
//!
//! An agent id names this server (its `agent_id`) or a connected client:
//! by its key fingerprint (lowercase hex, a client's default agent id) or
//! by the agent id the client said in `sys:hello`. A tree path names a
//! subtree: the clients that said they stand in it, and this server if its
//! own tree path is in it. Neither: every client, and this server. Both:
//! that agent, if it is in that subtree. Clients check both fields
//! themselves; this only decides where the command is sent.

use vigil_auth::Fingerprint;

use crate::{ServerHandle, Target};

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The clients to send it to; `None` when no client is meant.
    pub(crate) clients: Option<Target>,
    /// Whether it is meant for this server too (an emergency shutdown
    /// then stops it).
    pub(crate) server: bool,
}

/// Resolves a command's targets among the connected clients and this
/// server; `Err` says, for a 404, why nothing matches.
pub(crate) fn resolve(
    server: &ServerHandle,
    agent: Option<&str>,
    tree: Option<&[String]>,
) -> Result<Resolved, String> {
    let tree = tree.filter(|t| !t.is_empty());
    let server_inside = tree.is_none_or(|t| server.tree_path().starts_with(t));
    let scope = || match tree {
        Some(t) => format!(" in the subtree {t:?}"),
        None => String::new(),
    };
    match agent {
        Some(id) if id == server.agent_id() => {
            if server_inside {
                Ok(Resolved {
                    clients: None,
                    server: true,
                })
            } else {
                Err(format!("this server ({id:?}) is not{}", scope()))
            }
        }
        Some(id) => {
            let found = server.matching_clients(|h| {
                (h.info.fingerprint.hex_eq(id) || h.agent_id() == Some(id))
                    && tree.is_none_or(|t| h.within(t))
            });
            if found.is_empty() {
                let hint = match id.parse::<Fingerprint>() {
                    Ok(fp) if fp.to_hex() != id => {
                        " (fingerprints are given in lowercase hex)".to_owned()
                    }
                    _ => String::new(),
                };
                return Err(format!(
                    "no connected agent {id:?}{}{hint}, and it is not this server ({:?})",
                    scope(),
                    server.agent_id()
                ));
            }
            Ok(Resolved {
                clients: Some(Target::Clients(found)),
                server: false,
            })
        }
        None => match tree {
            Some(t) => {
                let any = !server.matching_clients(|h| h.within(t)).is_empty();
                if !any && !server_inside {
                    return Err(format!("no connected agent is{}", scope()));
                }
                Ok(Resolved {
                    clients: any.then(|| Target::Subtree(t.to_vec())),
                    server: server_inside,
                })
            }
            None => Ok(Resolved {
                clients: (!server.sessions().is_empty()).then_some(Target::All),
                server: true,
            }),
        },
    }
}

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

/// A client as resolution sees it: a session of this server, or a client
/// another server of the cluster holds (as presence says).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub(crate) fingerprint: &'a Fingerprint,
    /// The agent id it said in `sys:hello`.
    pub(crate) agent_id: Option<&'a str>,
    /// The tree path it said it stands in.
    pub(crate) tree_path: Option<&'a [String]>,
}

impl Candidate<'_> {
    /// Whether it said it stands in the subtree at `path`; a client that
    /// said nothing (or an empty path) is in none.
    pub(crate) fn within(&self, path: &[String]) -> bool {
        self.tree_path
            .is_some_and(|p| !p.is_empty() && p.starts_with(path))
    }
}

/// Where a command goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The clients to send it to; `None` when no client is meant.
    pub(crate) clients: Option<Target>,
    /// Whether it is meant for this server too (an emergency shutdown
    /// then stops it).
    pub(crate) server: bool,
}

/// Why a command has nowhere to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unresolved {
    /// Nothing matches (404).
    NotFound(String),
    /// It may match a client this server cannot reach now (503): the
    /// cluster is unreachable, or the client is on another server.
    Unavailable(String),
}

impl Unresolved {
    /// The HTTP status it is answered with.
    pub(crate) fn status(&self) -> hyper::StatusCode {
        match self {
            Unresolved::NotFound(_) => hyper::StatusCode::NOT_FOUND,
            Unresolved::Unavailable(_) => hyper::StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// What it says.
    pub(crate) fn why(&self) -> &str {
        match self {
            Unresolved::NotFound(why) | Unresolved::Unavailable(why) => why,
        }
    }
}

/// Resolves a command's targets among the connected clients and this
/// server. In a cluster, the clients of the other servers count too (as
/// the cluster's presence has them); an agent found nowhere is a 404, or
/// a 503 while the cluster cannot be asked.
pub(crate) fn resolve(
    server: &ServerHandle,
    agent: Option<&str>,
    tree: Option<&[String]>,
) -> Result<Resolved, Unresolved> {
    let own = Own {
        agent_id: server.agent_id(),
        tree_path: server.tree_path(),
    };
    resolve_among(&own, |wanted| server.matching_clients(wanted), agent, tree).map_err(|why| {
        let Some(id) = agent else {
            return Unresolved::NotFound(why);
        };
        match server.locate_agent(id) {
            None | Some(vigil_cluster::Location::Nowhere) => Unresolved::NotFound(why),
            Some(vigil_cluster::Location::Unknown) => Unresolved::Unavailable(format!(
                "no agent {id:?} is connected to this server, and the cluster cannot be asked where it is (NATS unreachable): try again, or send through another server"
            )),
            // Found since the search: it attached meanwhile; ask again.
            Some(vigil_cluster::Location::Remote(r)) => Unresolved::Unavailable(format!(
                "agent {id:?} has just attached to server {:?} ({}): try again",
                r.server_agent_id, r.presence.server
            )),
        }
    })
}

/// This server's own names, as [`resolve_among`] needs them.
struct Own<'a> {
    agent_id: &'a str,
    tree_path: &'a [String],
}

/// [`resolve`] for a server named `own`, whose clients `matching`
/// searches: it gives the fingerprints of the clients a predicate picks,
/// once each.
fn resolve_among(
    own: &Own<'_>,
    matching: impl Fn(&dyn Fn(&Candidate<'_>) -> bool) -> Vec<Fingerprint>,
    agent: Option<&str>,
    tree: Option<&[String]>,
) -> Result<Resolved, String> {
    let tree = tree.filter(|t| !t.is_empty());
    let server_inside = tree.is_none_or(|t| own.tree_path.starts_with(t));
    let scope = || match tree {
        Some(t) => format!(" in the subtree {t:?}"),
        None => String::new(),
    };
    match agent {
        Some(id) if id == own.agent_id => {
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
            let found = matching(&|h| {
                (h.fingerprint.hex_eq(id) || h.agent_id == Some(id))
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
                    own.agent_id
                ));
            }
            Ok(Resolved {
                clients: Some(Target::Clients(found)),
                server: false,
            })
        }
        None => match tree {
            Some(t) => {
                let any = !matching(&|h| h.within(t)).is_empty();
                if !any && !server_inside {
                    return Err(format!("no connected agent is{}", scope()));
                }
                Ok(Resolved {
                    clients: any.then(|| Target::Subtree(t.to_vec())),
                    server: server_inside,
                })
            }
            None => Ok(Resolved {
                clients: (!matching(&|_| true).is_empty()).then_some(Target::All),
                server: true,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};
    use std::time::SystemTime;

    use vigil_proto::Hello;

    use super::*;
    use crate::SessionInfo;
    use crate::outbound::Outbound;
    use crate::server::SessionHandle;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn path(p: &[&str]) -> Vec<String> {
        p.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Session `id` of client `fp(client)`, which said `hello` (or nothing).
    fn session(id: u64, client: u8, hello: Option<Hello>) -> SessionHandle {
        let place = OnceLock::new();
        if let Some(h) = hello {
            place.set(h).expect("unset");
        }
        SessionHandle {
            info: SessionInfo {
                id,
                fingerprint: fp(client),
                peer: std::net::SocketAddr::from(([127, 0, 0, 1], 4000)),
                connected_at: SystemTime::UNIX_EPOCH,
                place: None,
                clock_skew_ms: None,
                nonce_heartbeats: false,
                transport: crate::server::Transport::Tls,
            },
            out: Arc::new(Outbound::new(1024)),
            place: Arc::new(place),
            beat: Default::default(),
        }
    }

    fn hello(agent_id: Option<&str>, tree_path: &[&str]) -> Option<Hello> {
        Some(Hello {
            agent_id: agent_id.map(str::to_owned),
            tree_path: path(tree_path),
        })
    }

    /// Clients 1 and 2 in `eu` (client 1 with two sessions), 3 in `us`,
    /// 4 with no place, 5 with an agent id but no tree path.
    fn sessions() -> Vec<SessionHandle> {
        vec![
            session(1, 1, hello(Some("edge-paris"), &["eu", "fr", "paris"])),
            session(2, 1, hello(Some("edge-paris"), &["eu", "fr", "paris"])),
            session(3, 2, hello(None, &["eu", "de"])),
            session(4, 3, hello(Some("edge-ny"), &["us", "ny"])),
            session(5, 4, None),
            session(6, 5, hello(Some("loose"), &[])),
        ]
    }

    /// As [`ServerHandle::matching_clients`] does over the registry.
    fn resolve_in(
        list: &[SessionHandle],
        own_path: &[&str],
        agent: Option<&str>,
        tree: Option<&[&str]>,
    ) -> Result<Resolved, String> {
        let own_path = path(own_path);
        let own = Own {
            agent_id: "server-1",
            tree_path: &own_path,
        };
        let tree = tree.map(path);
        let matching = |wanted: &dyn Fn(&Candidate<'_>) -> bool| {
            let mut found: Vec<Fingerprint> = list
                .iter()
                .filter(|h| wanted(&h.candidate()))
                .map(|h| h.info.fingerprint)
                .collect();
            found.sort_unstable();
            found.dedup();
            found
        };
        resolve_among(&own, matching, agent, tree.as_deref())
    }

    fn clients(list: &[u8]) -> Result<Resolved, String> {
        Ok(Resolved {
            clients: Some(Target::Clients(list.iter().map(|&n| fp(n)).collect())),
            server: false,
        })
    }

    #[test]
    fn an_agent_id_can_be_a_fingerprint() {
        let list = sessions();
        let hex = fp(3).to_hex();
        assert_eq!(resolve_in(&list, &["eu"], Some(&hex), None), clients(&[3]));
        // A client that said nothing is still known by its key.
        let hex = fp(4).to_hex();
        assert_eq!(resolve_in(&list, &["eu"], Some(&hex), None), clients(&[4]));
    }

    #[test]
    fn a_fingerprint_in_uppercase_is_not_matched_and_the_error_says_why() {
        let mut list = sessions();
        list.push(session(9, 0xab, None));
        let upper = fp(0xab).to_hex().to_uppercase();
        let err = resolve_in(&list, &["eu"], Some(&upper), None).expect_err("not lowercase");
        assert!(
            err.contains("(fingerprints are given in lowercase hex)"),
            "{err}"
        );
        assert!(
            err.contains(&format!("no connected agent {upper:?}")),
            "{err}"
        );
    }

    #[test]
    fn an_agent_id_said_in_hello_names_every_session_of_that_client_once() {
        let list = sessions();
        assert_eq!(
            resolve_in(&list, &["eu"], Some("edge-paris"), None),
            clients(&[1])
        );
        assert_eq!(
            resolve_in(&list, &["eu"], Some("loose"), None),
            clients(&[5])
        );
    }

    #[test]
    fn an_unknown_agent_is_an_error() {
        let list = sessions();
        let err = resolve_in(&list, &["eu"], Some("nobody"), None).expect_err("unknown");
        assert_eq!(
            err,
            "no connected agent \"nobody\", and it is not this server (\"server-1\")"
        );
        // A well-formed fingerprint of no connected client: no hint.
        let hex = fp(77).to_hex();
        let err = resolve_in(&list, &["eu"], Some(&hex), None).expect_err("not connected");
        assert!(!err.contains("lowercase"), "{err}");
        assert!(resolve_in(&[], &["eu"], Some("edge-paris"), None).is_err());
    }

    #[test]
    fn the_servers_own_agent_id_means_the_server_alone() {
        let list = sessions();
        let server_only = Ok(Resolved {
            clients: None,
            server: true,
        });
        assert_eq!(
            resolve_in(&list, &["eu"], Some("server-1"), None),
            server_only
        );
        assert_eq!(
            resolve_in(&list, &["eu"], Some("server-1"), Some(&["eu"])),
            server_only
        );
        let err = resolve_in(&list, &["eu"], Some("server-1"), Some(&["us"]))
            .expect_err("outside the subtree");
        assert_eq!(
            err,
            "this server (\"server-1\") is not in the subtree [\"us\"]"
        );
    }

    #[test]
    fn an_agent_and_a_subtree_mean_that_agent_if_it_is_inside() {
        let list = sessions();
        assert_eq!(
            resolve_in(&list, &[], Some("edge-paris"), Some(&["eu", "fr"])),
            clients(&[1])
        );
        let err = resolve_in(&list, &[], Some("edge-paris"), Some(&["us"]))
            .expect_err("not in the subtree");
        assert_eq!(
            err,
            "no connected agent \"edge-paris\" in the subtree [\"us\"], and it is not this server (\"server-1\")"
        );
        // A client that said no place is in no subtree.
        let hex = fp(4).to_hex();
        assert!(resolve_in(&list, &[], Some(&hex), Some(&["eu"])).is_err());
        assert!(resolve_in(&list, &[], Some("loose"), Some(&["eu"])).is_err());
    }

    #[test]
    fn a_subtree_selects_the_sessions_within_it() {
        let list = sessions();
        let within = |t: &[&str]| -> Vec<u64> {
            let t = path(t);
            list.iter()
                .filter(|h| h.within(&t))
                .map(|h| h.info.id)
                .collect()
        };
        assert_eq!(within(&["eu"]), vec![1, 2, 3]);
        assert_eq!(within(&["eu", "fr"]), vec![1, 2]);
        assert_eq!(within(&["eu", "fr", "paris"]), vec![1, 2]);
        assert_eq!(within(&["eu", "fr", "paris", "15e"]), Vec::<u64>::new());
        assert_eq!(within(&["us"]), vec![4]);
        assert_eq!(
            within(&["fr"]),
            Vec::<u64>::new(),
            "a path starts at the root"
        );
        // No place (no hello, or an empty tree path) is in no subtree, not
        // even the whole tree.
        assert_eq!(within(&[]), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_subtree_target_names_the_subtree_and_the_server_if_inside() {
        let list = sessions();
        assert_eq!(
            resolve_in(&list, &["eu", "fr"], None, Some(&["eu"])),
            Ok(Resolved {
                clients: Some(Target::Subtree(path(&["eu"]))),
                server: true,
            })
        );
        assert_eq!(
            resolve_in(&list, &["eu", "fr"], None, Some(&["us", "ny"])),
            Ok(Resolved {
                clients: Some(Target::Subtree(path(&["us", "ny"]))),
                server: false,
            })
        );
        // No client there, but the server is.
        assert_eq!(
            resolve_in(&list, &["asia", "jp"], None, Some(&["asia"])),
            Ok(Resolved {
                clients: None,
                server: true,
            })
        );
    }

    #[test]
    fn an_empty_subtree_is_an_error() {
        let list = sessions();
        let err = resolve_in(&list, &["eu"], None, Some(&["asia"])).expect_err("nobody there");
        assert_eq!(err, "no connected agent is in the subtree [\"asia\"]");
        // Only a client without a place: still nobody.
        let lone = [session(1, 4, None)];
        assert!(resolve_in(&lone, &["eu"], None, Some(&["us"])).is_err());
    }

    #[test]
    fn no_target_means_every_client_and_the_server() {
        let everyone = Ok(Resolved {
            clients: Some(Target::All),
            server: true,
        });
        assert_eq!(resolve_in(&sessions(), &["eu"], None, None), everyone);
        // An empty tree path scopes nothing.
        assert_eq!(resolve_in(&sessions(), &["eu"], None, Some(&[])), everyone);
        assert_eq!(
            resolve_in(&[], &["eu"], None, None),
            Ok(Resolved {
                clients: None,
                server: true,
            })
        );
    }
}

//! The body of `sys:hello` ([`Hello`]), its limits, and [`tree_path_of`].

use serde::{Deserialize, Serialize};

/// The body of `sys:hello:<ref>`: where a client stands, so that the
/// server can route commands aimed at an agent id or a subtree to it. The
/// server answers `sys:hello_ok`. It is a routing hint only: the client
/// itself checks every command's `target_agent_id` and `target_tree_path`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The agent id the client checks `target_agent_id` against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// Its place in the agent tree, root first (CIRIS `target_tree_path`
    /// semantics: a command scoped to a path reaches the agents at it and
    /// below). Empty: no place, so no scoped command is for it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tree_path: Vec<String>,
}

/// Longest `agent_id` or tree path entry in a [`Hello`], in bytes (as in
/// signed commands).
pub const MAX_HELLO_ID_LEN: usize = 256;
/// Most entries in a [`Hello`]'s tree path (as in signed commands).
pub const MAX_HELLO_PATH_LEN: usize = 64;

/// A tree path from `--tree-path` text (entries separated by `/`, root
/// first) or from a config file's list, checked as [`Hello::problem`]
/// checks one: what a program reads before it says hello.
pub fn tree_path_of(
    text: Option<&str>,
    list: Option<Vec<String>>,
) -> Result<Option<Vec<String>>, String> {
    let path = match text {
        Some(text) => Some(
            text.split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        None => list,
    };
    if let Some(path) = &path {
        if path.is_empty() {
            return Err("tree_path is empty: leave it out for no place in the tree".into());
        }
        let hello = Hello {
            agent_id: None,
            tree_path: path.clone(),
        };
        if let Some(problem) = hello.problem() {
            return Err(format!("tree_path: {problem}"));
        }
    }
    Ok(path)
}

impl Hello {
    /// Why this hello is refused, if it is: an id or a path entry empty or
    /// past [`MAX_HELLO_ID_LEN`], or more than [`MAX_HELLO_PATH_LEN`] entries.
    pub fn problem(&self) -> Option<String> {
        if let Some(id) = &self.agent_id
            && (id.is_empty() || id.len() > MAX_HELLO_ID_LEN)
        {
            return Some(format!("agent_id must be 1 to {MAX_HELLO_ID_LEN} bytes"));
        }
        if self.tree_path.len() > MAX_HELLO_PATH_LEN {
            return Some(format!(
                "tree_path has more than {MAX_HELLO_PATH_LEN} entries"
            ));
        }
        if self
            .tree_path
            .iter()
            .any(|p| p.is_empty() || p.len() > MAX_HELLO_ID_LEN)
        {
            return Some(format!(
                "tree_path entries must be 1 to {MAX_HELLO_ID_LEN} bytes"
            ));
        }
        None
    }
}

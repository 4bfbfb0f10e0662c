//! The Merkle tree over one beat's nonces, as Roughtime builds it: one
//! signature covers every client's nonce, and each client gets the path
//! from its leaf to the signed root.
//!
//! Leaves and inner nodes hash with different first bytes, so a leaf can
//! never be taken for a node:
//!
//! ```text
//! leaf = SHA-256(0x00 || nonce)
//! node = SHA-256(0x01 || left || right)
//! ```
//!
//! A level with an odd number of nodes pairs its last node with itself.
//! A path lists one sibling per level, leaf upwards; bit `i` of the leaf's
//! index says whether the node at level `i` is a right child.

use sha2::{Digest as _, Sha256};

/// A 32-byte SHA-256 value.
pub type Hash = [u8; 32];

/// Longest path accepted (2^32 leaves).
pub const MAX_PATH: usize = 32;

/// The hash of a leaf holding `nonce`.
pub fn leaf(nonce: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(nonce);
    h.finalize().into()
}

fn node(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root over `leaves` and, for each leaf in order, its path. `None`
/// for no leaves.
pub fn build(leaves: &[Hash]) -> Option<(Hash, Vec<Vec<Hash>>)> {
    if leaves.is_empty() {
        return None;
    }
    let mut paths: Vec<Vec<Hash>> = vec![Vec::new(); leaves.len()];
    // Which node of the current level each leaf sits under.
    let mut at: Vec<usize> = (0..leaves.len()).collect();
    let mut level = leaves.to_vec();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            let right = pair.get(1).unwrap_or(&pair[0]);
            next.push(node(&pair[0], right));
        }
        for (path, i) in paths.iter_mut().zip(at.iter_mut()) {
            let sibling = *i ^ 1;
            path.push(*level.get(sibling).unwrap_or(&level[*i]));
            *i /= 2;
        }
        level = next;
    }
    Some((level[0], paths))
}

/// The root that `path` leads to from `leaf` at `index`, or `None` when
/// the index has bits beyond the path or the path is too long.
pub fn root_of(leaf: Hash, index: u64, path: &[Hash]) -> Option<Hash> {
    if path.len() > MAX_PATH || (path.len() < 64 && index >> path.len() != 0) {
        return None;
    }
    let mut h = leaf;
    for (level, sibling) in path.iter().enumerate() {
        h = if (index >> level) & 1 == 1 {
            node(sibling, &h)
        } else {
            node(&h, sibling)
        };
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(n: usize) -> Vec<Hash> {
        (0..n).map(|i| leaf(&(i as u64).to_be_bytes())).collect()
    }

    #[test]
    fn every_leaf_proves_its_place_for_every_size() {
        for n in 1..=70 {
            let leaves = leaves(n);
            let (root, paths) = build(&leaves).expect("tree");
            assert_eq!(paths.len(), n);
            for (i, path) in paths.iter().enumerate() {
                assert_eq!(path.len(), n.next_power_of_two().trailing_zeros() as usize);
                assert_eq!(
                    root_of(leaves[i], i as u64, path),
                    Some(root),
                    "n={n} i={i}"
                );
            }
        }
    }

    #[test]
    fn a_wrong_leaf_index_or_sibling_gives_another_root() {
        let leaves = leaves(5);
        let (root, paths) = build(&leaves).expect("tree");
        assert_ne!(root_of(leaves[1], 2, &paths[1]), Some(root));
        assert_ne!(root_of(leaves[2], 1, &paths[1]), Some(root));
        let mut bent = paths[1].clone();
        bent[1][0] ^= 1;
        assert_ne!(root_of(leaves[1], 1, &bent), Some(root));
        // An index that the path cannot hold.
        assert_eq!(root_of(leaves[1], 1 | 1 << 3, &paths[1]), None);
        assert_eq!(root_of(leaves[0], 0, &[[0; 32]; MAX_PATH + 1]), None);
    }

    #[test]
    fn a_single_leaf_is_its_own_root_and_a_leaf_is_never_a_node() {
        let one = leaves(1);
        let (root, paths) = build(&one).expect("tree");
        assert_eq!(root, one[0]);
        assert!(paths[0].is_empty());
        assert!(build(&[]).is_none());
        // The root of two leaves is not the leaf hash of their concatenation.
        let two = leaves(2);
        let (root, _) = build(&two).expect("tree");
        assert_ne!(root, leaf(&[two[0], two[1]].concat()));
    }
}

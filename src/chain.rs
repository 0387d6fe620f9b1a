//! Tamper evidence: each ledger row carries a per-account sequence number
//! and a SHA-256 hash chained over its content and the previous row's hash
//! (sql/ledger_chain.sql builds the content; credits_verify() recomputes the
//! chain). Editing or removing a row breaks every hash after it.

use pgrx::prelude::*;
use sha2::{Digest, Sha256};

/// Hex SHA-256 of `previous` hash, a newline and the row's `content`.
pub fn chain_hash(previous: &str, content: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous.as_bytes());
    hasher.update(b"\n");
    hasher.update(content.as_bytes());
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[pg_extern(immutable, parallel_safe, strict, schema = "credits")]
pub fn _ledger_hash(previous: &str, content: &str) -> String {
    chain_hash(previous, content)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_hash_depends_on_the_previous_hash_and_the_content() {
        let first = chain_hash("", "acme|1|allocation|100");
        assert_eq!(first.len(), 64);
        assert_eq!(first, chain_hash("", "acme|1|allocation|100"));
        assert_ne!(first, chain_hash("", "acme|1|allocation|101"));
        assert_ne!(chain_hash(&first, "x"), chain_hash("0", "x"));
    }

    #[test]
    fn known_vector() {
        // sha256("\nabc")
        assert_eq!(
            chain_hash("", "abc"),
            "f39d39bfc99287b848780d4110eb663f0e7c344ae41f46a390c4135b89dc2756"
        );
    }
}

//! Helpers shared by the integration tests: a cluster started by
//! scripts/test.sh (CREDITS_TEST_URL), a fresh database per test.
#![allow(dead_code)]

use postgres::{Client, NoTls};

pub fn base_url() -> String {
    std::env::var("CREDITS_TEST_URL")
        .expect("CREDITS_TEST_URL is not set: run the integration tests through scripts/test.sh")
}

/// A new empty database; returns its connection string.
pub fn empty_db(name: &str) -> String {
    let mut admin = Client::connect(&format!("{} dbname=postgres", base_url()), NoTls).unwrap();
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .unwrap();
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    format!("{} dbname={name}", base_url())
}

/// A fresh database with the extension installed; returns its connection string.
pub fn fresh_db(name: &str) -> String {
    let url = empty_db(name);
    let mut client = Client::connect(&url, NoTls).unwrap();
    client.batch_execute("CREATE EXTENSION credits").unwrap();
    url
}

/// One column of text rows, for comparing states.
pub fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap()
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

pub fn connect(url: &str) -> Client {
    Client::connect(url, NoTls).unwrap()
}

/// The SQLSTATE of a failed call.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_string())
        .unwrap_or_else(|| format!("no SQLSTATE: {e}"))
}

pub fn assert_verify_empty(client: &mut Client) {
    let rows = client
        .query(
            "SELECT invariant, account_id, detail FROM credits_verify()",
            &[],
        )
        .unwrap();
    let violations: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}: {} ({})",
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2)
            )
        })
        .collect();
    assert!(
        violations.is_empty(),
        "credits_verify() found {violations:#?}"
    );
}

pub fn count(client: &mut Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).unwrap().get(0)
}

/// The tests' pseudo-random numbers: a 64-bit linear congruential generator
/// (Knuth's MMIX constants), seeded per client so that a run repeats.
pub struct Rng(pub u64);

impl Rng {
    /// The next state, all 64 bits (callers take the bits they need).
    pub fn step(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }

    /// The high 31 bits of the next state.
    pub fn next(&mut self) -> u64 {
        self.step() >> 33
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

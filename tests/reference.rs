//! The README is the user's manual: its API reference must say what the
//! extension installs. These tests read README.md and compare it with a
//! fresh install of the current version:
//!
//! - every SQL function and procedure of the extension in schema `public`
//!   has its signature in a code block of the README, with the same
//!   parameters in the same order, the same types, the same defaults
//!   (compared by value, by Postgres) and the same return type;
//! - each usage view's documented column list is its columns, in order,
//!   and every view of the extension is documented;
//! - every SQLSTATE the extension raises (SQL files and the library) has a
//!   row in the Errors table, and every row there is a code it raises or
//!   one of the few that Postgres raises for it (a CHECK constraint, a
//!   privilege);
//! - every setting the library defines is in the Settings table;
//! - every error text of the SQL files and the library (MESSAGE, DETAIL,
//!   HINT) is written as the README's Errors says, in Postgres' message
//!   style (pgTAP's throws_ok checks the texts of the errors it provokes,
//!   this test also those that no test provokes);
//! - every read of the clock in the SQL files and the library goes through
//!   `credits._now()`, which the Settings table's `credits.now` pins;
//! - no figure of money is divided (README, Upgrading: numeric quotients
//!   are rounded), only the two rounded figures the README shows.
//!
//! A function whose parameters change, a view that gains a column, a new
//! error code or setting thus fails CI until the README says so.

mod common;

use common::*;
use postgres::Client;
use std::collections::BTreeSet;

const README: &str = include_str!("../README.md");

/// The README's fenced code blocks, one string, with `--` comments cut off
/// (outside quotes) so that a signature reads as SQL.
fn code_text() -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in README.lines() {
        if line.trim_start().starts_with("```") {
            inside = !inside;
            continue;
        }
        if inside {
            out.push_str(strip_comment(line));
            out.push('\n');
        }
    }
    out
}

fn strip_comment(line: &str) -> &str {
    let mut quoted = false;
    let bytes = line.as_bytes();
    for i in 0..bytes.len() {
        match bytes[i] {
            b'\'' => quoted = !quoted,
            b'-' if !quoted && bytes.get(i + 1) == Some(&b'-') => return &line[..i],
            _ => {}
        }
    }
    line
}

/// `s[open..]` starts with `(`: the index of the matching `)`.
fn closing(s: &str, open: usize) -> usize {
    let mut depth = 0;
    let mut quoted = false;
    for (i, c) in s[open..].char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return open + i;
                }
            }
            _ => {}
        }
    }
    panic!("unbalanced parentheses in {:?}", &s[open..]);
}

/// Splits on the commas that are outside parentheses and quotes.
fn split_top(s: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0, false, 0);
    for (i, c) in s.char_indices() {
        match c {
            '\'' => quoted = !quoted,
            '(' | '[' if !quoted => depth += 1,
            ')' | ']' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                parts.push(s[start..i].to_string());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(s[start..].to_string());
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// One words-only form of a type or a return type, as both sides write it.
fn normal(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
        .replace("timestamp with time zone", "timestamptz")
        .replace("table (", "table(")
}

#[derive(Debug, PartialEq)]
struct Param {
    name: String,
    ty: String,
    default: Option<String>,
}

/// A parameter as `name type [DEFAULT expr]` (a leading `IN` dropped);
/// `None` for anything else (an argument of an example call).
fn param(text: &str) -> Option<Param> {
    let text = text.trim().strip_prefix("IN ").unwrap_or(text.trim());
    if text.contains("=>") {
        return None;
    }
    let (decl, default) = match text.find(" DEFAULT ") {
        Some(i) => (&text[..i], Some(text[i + 9..].trim().to_string())),
        None => (text, None),
    };
    let (name, ty) = decl.trim().split_once(char::is_whitespace)?;
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_';
    name.chars().all(plain).then(|| Param {
        name: name.to_string(),
        ty: normal(ty),
        default,
    })
}

/// The README's signature of `name`: its parameters and what follows
/// `RETURNS` (empty for a procedure). A signature starts a line of a code
/// block (after `CALL ` for a procedure) and declares its parameters with
/// types; example calls are passed over.
fn documented(code: &str, name: &str) -> Option<(Vec<Param>, String)> {
    code.match_indices(&format!("{name}(")).find_map(|(i, _)| {
        let line_start = code[..i].rfind('\n').map_or(0, |n| n + 1);
        let lead = code[line_start..i].trim_start();
        if !(lead.is_empty() || lead == "CALL ") {
            return None;
        }
        let open = i + name.len();
        let close = closing(code, open);
        let params: Option<Vec<Param>> = split_top(&code[open + 1..close])
            .iter()
            .map(|p| param(p))
            .collect();
        let params = params?;
        let rest = code[close + 1..].trim_start();
        let returns = match rest.strip_prefix("RETURNS") {
            None if params.is_empty() && lead.is_empty() => return None,
            None => String::new(),
            Some(r) => {
                let r = r.trim_start();
                if r.starts_with("TABLE") {
                    let open = r.find('(').unwrap();
                    r[..=closing(r, open)].to_string()
                } else {
                    r.lines().next().unwrap().trim().to_string()
                }
            }
        };
        Some((params, normal(&returns)))
    })
}

fn ext_db() -> Client {
    connect(&fresh_db("it_reference"))
}

#[test]
fn every_function_has_its_signature_in_the_readme() {
    let mut client = ext_db();
    let code = code_text();
    let rows = client
        .query(
            "SELECT p.proname::text, pg_get_function_arguments(p.oid), coalesce(pg_get_function_result(p.oid), '')
               FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'credits'
              WHERE p.pronamespace = 'public'::regnamespace
              ORDER BY 1",
            &[],
        )
        .unwrap();
    assert!(rows.len() >= 20, "the extension's functions were not found");
    let mut problems = Vec::new();
    for row in &rows {
        let name: String = row.get(0);
        let installed: Vec<Param> = split_top(&row.get::<_, String>(1))
            .iter()
            .map(|p| param(p).unwrap_or_else(|| panic!("{name}: cannot read the argument {p:?}")))
            .collect();
        let returns = normal(&row.get::<_, String>(2));
        let Some((readme, readme_returns)) = documented(&code, &name) else {
            problems.push(format!(
                "{name}: no signature in a code block of the README"
            ));
            continue;
        };
        let names = |ps: &[Param]| ps.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        if names(&readme) != names(&installed) {
            problems.push(format!(
                "{name}: the README lists the parameters {:?}, the extension has {:?}",
                names(&readme),
                names(&installed)
            ));
            continue;
        }
        for (doc, real) in readme.iter().zip(&installed) {
            if doc.ty != real.ty {
                problems.push(format!(
                    "{name}({}): the README says {}, the extension has {}",
                    real.name, doc.ty, real.ty
                ));
            }
            match (&doc.default, &real.default) {
                (None, None) => {}
                (Some(d), Some(r)) => {
                    let same: bool = client
                        .query_one(
                            &format!("SELECT ({d})::{} IS NOT DISTINCT FROM ({r})", real.ty),
                            &[],
                        )
                        .unwrap()
                        .get(0);
                    if !same {
                        problems.push(format!(
                            "{name}({}): the README's default is {d}, the extension's {r}",
                            real.name
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{name}({}): the README's default is {:?}, the extension's {:?}",
                    real.name, doc.default, real.default
                )),
            }
        }
        if readme_returns != returns {
            problems.push(format!(
                "{name}: the README says RETURNS {readme_returns:?}, the extension returns {returns:?}"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_usage_views_columns_are_those_the_readme_lists() {
    let mut client = ext_db();
    let section = &README[README.find("\n## Usage views").unwrap()..];
    let section = &section[..section[1..].find("\n## ").unwrap()];
    let mut documented = BTreeSet::new();
    let mut problems = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let view = cells[1].trim_matches('`');
        let listed = cells[3].split('`').nth(1).unwrap();
        documented.insert(view.to_string());
        let real: String = client
            .query_one(
                "SELECT string_agg(attname, ', ' ORDER BY attnum) FROM pg_attribute
                  WHERE attrelid = to_regclass('credits.' || $1) AND attnum > 0 AND NOT attisdropped",
                &[&view],
            )
            .unwrap()
            .get::<_, Option<String>>(0)
            .unwrap_or_default();
        if real != listed {
            problems.push(format!(
                "credits.{view}: the README lists {listed:?}, the view has {real:?}"
            ));
        }
    }
    let views: BTreeSet<String> = rows(
        &mut client,
        "SELECT c.relname::text FROM pg_class c
           JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
           JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'credits'
          WHERE c.relkind = 'v'",
    )
    .into_iter()
    .collect();
    assert!(views.len() >= 6, "the extension's views were not found");
    if views != documented {
        problems.push(format!(
            "the README documents the views {documented:?}, the extension has {views:?}"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// The SQLSTATE of a `PgSqlErrorCode` the library raises. A new one fails
/// the test until it is added here (and to the README).
fn errcode(name: &str) -> &'static str {
    match name {
        "ERRCODE_INVALID_PARAMETER_VALUE" => "22023",
        "ERRCODE_NULL_VALUE_NOT_ALLOWED" => "22004",
        "ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE" => "22003",
        "ERRCODE_DATETIME_FIELD_OVERFLOW" => "22008",
        "ERRCODE_DATA_CORRUPTED" => "XX001",
        "ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE" => "55000",
        other => panic!("tests/reference.rs does not know the SQLSTATE of {other}: add it"),
    }
}

/// The five-character code at the start of `s` (after a quote), if any.
fn code_at(s: &str) -> Option<String> {
    let code: String = s.chars().take(5).collect();
    (code.len() == 5
        && code
            .chars()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
        && s[5..].starts_with('\''))
    .then_some(code)
}

/// The project's files in `dir` (`sql`, the install script's sources, or
/// `src`, the library's) whose names end in `.ext`, sorted.
fn source_files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut paths: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    paths.sort();
    paths
}

/// Every SQLSTATE the extension's SQL files and library raise.
fn raised() -> BTreeSet<String> {
    let mut codes = BTreeSet::new();
    for path in source_files("sql", "sql") {
        let text = std::fs::read_to_string(&path).unwrap();
        for marker in ["_raise('", "ERRCODE = '"] {
            for (i, _) in text.match_indices(marker) {
                let at = &text[i + marker.len()..];
                match code_at(at) {
                    Some(code) => {
                        codes.insert(code);
                    }
                    None => panic!(
                        "{}: a raise whose SQLSTATE is not a literal code: {:?}",
                        path.display(),
                        &at[..at.len().min(40)]
                    ),
                }
            }
        }
    }
    for path in source_files("src", "rs") {
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices("PgSqlErrorCode::ERRCODE_") {
            let name: String = text[i + 16..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            codes.insert(errcode(&name).to_string());
        }
    }
    codes
}

#[test]
fn every_sqlstate_raised_is_in_the_errors_table_and_only_those() {
    let section = &README[README.find("\n## Errors").unwrap()..];
    let section = &section[..section[1..].find("\n## ").unwrap()];
    let documented: BTreeSet<String> = section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    let raised = raised();
    assert!(
        raised.contains("CR001") && raised.contains("22023"),
        "no raise found: {raised:?}"
    );
    let undocumented: Vec<_> = raised.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "raised by the extension, missing from the README's Errors table: {undocumented:?}"
    );
    // Postgres raises these for the extension: a direct write that breaks a
    // CHECK constraint, a call without the privilege.
    let by_postgres: BTreeSet<String> = ["23514", "42501"].map(String::from).into();
    let stale: Vec<_> = documented
        .difference(&raised)
        .filter(|c| !by_postgres.contains(*c))
        .collect();
    assert!(
        stale.is_empty(),
        "in the README's Errors table, raised by nothing: {stale:?}"
    );
}

/// The SQL string literal at the start of `s` (after blanks), with `''`
/// unescaped and the literals that follow it on later lines joined (SQL
/// concatenates them), and the rest of `s` after it; None when `s` does
/// not start with a literal.
fn sql_literal(s: &str) -> Option<(String, &str)> {
    let mut rest = s.trim_start();
    let mut text = String::new();
    let mut first = true;
    loop {
        let Some(body) = rest.strip_prefix('\'') else {
            return (!first).then_some((text, rest));
        };
        let mut i = 0;
        let b = body.as_bytes();
        loop {
            match b.get(i) {
                Some(b'\'') if b.get(i + 1) == Some(&b'\'') => {
                    text.push('\'');
                    i += 2;
                }
                Some(b'\'') => break,
                Some(_) => {
                    let c = body[i..].chars().next().unwrap();
                    text.push(c);
                    i += c.len_utf8();
                }
                None => return None,
            }
        }
        rest = &body[i + 1..];
        first = false;
        // Another literal on a later line continues this one.
        let blanks = rest.len() - rest.trim_start().len();
        if !(rest[..blanks].contains('\n') && rest.trim_start().starts_with('\'')) {
            return Some((text, rest));
        }
        rest = rest.trim_start();
    }
}

/// The Rust string literal at the start of `s` (after blanks), with `\"`
/// unescaped and `\` line continuations joined, and the rest after it.
fn rust_literal(s: &str) -> Option<(String, &str)> {
    let body = s.trim_start().strip_prefix('"')?;
    let mut text = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((text, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, '\n')) => {
                    let skip = body[i + 2..].len() - body[i + 2..].trim_start().len();
                    for _ in 0..body[i + 2..i + 2 + skip].chars().count() {
                        chars.next();
                    }
                }
                Some((_, e)) => text.push(e),
                None => return None,
            },
            _ => text.push(c),
        }
    }
    None
}

/// What follows the argument of a Rust call that `s` is in, `depth`
/// parentheses deep (1 inside its `format!(`): the text after the comma
/// that ends it. The arguments' own parentheses and commas are skipped.
fn next_argument(s: &str, mut depth: usize) -> &str {
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return "", // the call ends
            ')' => depth -= 1,
            ',' if depth == 0 => return &s[i + 1..],
            _ => {}
        }
    }
    ""
}

/// Postgres' "Error Message Style Guide": a primary message starts in lower
/// case and ends without a period; a DETAIL or a HINT is sentences, each
/// starting with a capital letter (here also with a parameter's or a
/// function's name, as in `amount is 0.5.`), the last ending with a
/// period. `whole` says the literal is the whole text (not the first part
/// of a concatenation), so its end can be judged. A `%s` or `{name}`
/// first is a name the caller passes.
fn out_of_style(kind: &str, text: &str, whole: bool) -> Option<String> {
    // A capitalized word; an acronym (BYOK) is neither case.
    let starts_capital = text.chars().next().is_some_and(char::is_uppercase);
    let starts_word = starts_capital && text.chars().nth(1).is_some_and(char::is_lowercase);
    let first_word: String = text.chars().take_while(|c| *c != ' ').collect();
    let second_word = text[first_word.len()..]
        .trim_start()
        .split(' ')
        .next()
        .unwrap_or("");
    let named = first_word.starts_with('%')
        || first_word.starts_with('{')
        || first_word.contains('_')
        || ["is", "has", "must"].contains(&second_word);
    let problem = if kind == "MESSAGE" {
        if starts_word {
            Some("starts with a capital")
        } else if whole && text.ends_with('.') {
            Some("ends with a period")
        } else {
            None
        }
    } else if !(starts_capital || named) {
        Some("does not start with a capital or a name")
    } else if whole && !text.ends_with('.') {
        Some("does not end with a period")
    } else {
        None
    };
    problem.map(|p| format!("{kind} {p}: {text:?}"))
}

#[test]
fn every_error_text_follows_the_postgres_message_style() {
    let mut problems = Vec::new();
    let mut checked = 0;
    for path in source_files("sql", "sql")
        .into_iter()
        .chain(source_files("src", "rs"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut found = |kind: &str, literal: Option<(String, &str)>, at: usize| {
            let line = text[..at].lines().count();
            match literal {
                Some((lit, rest)) => {
                    checked += 1;
                    let whole = !rest.trim_start().starts_with("||");
                    if let Some(p) = out_of_style(kind, &lit, whole) {
                        problems.push(format!("{name}:{line}: {p}"));
                    }
                }
                None => problems.push(format!("{name}:{line}: a {kind} this test cannot read")),
            }
        };
        if name.ends_with(".sql") {
            for kind in ["MESSAGE", "DETAIL", "HINT"] {
                for (i, _) in text.match_indices(&format!("{kind} = ")) {
                    let mut at = text[i + kind.len() + 3..].trim_start();
                    at = at.strip_prefix("pg_catalog.").unwrap_or(at);
                    at = at.strip_prefix("format(").unwrap_or(at);
                    if let Some(case) = at.strip_prefix("CASE ") {
                        // Each branch of a CASE is a text of its own.
                        let case = &case[..case.find(" END").unwrap()];
                        for branch in case
                            .split(" THEN ")
                            .skip(1)
                            .chain(case.split(" ELSE ").skip(1))
                        {
                            let branch = branch.trim_start();
                            let branch = branch.strip_prefix("format(").unwrap_or(branch);
                            found(kind, sql_literal(branch), i);
                        }
                    } else {
                        found(kind, sql_literal(at), i);
                    }
                }
            }
        } else {
            for (marker, kind) in [(".set_detail(", "DETAIL"), (".set_hint(", "HINT")] {
                for (i, _) in text.match_indices(marker) {
                    let at = text[i + marker.len()..].trim_start();
                    if at.starts_with("detail)") || at.starts_with("hint)") {
                        continue; // bad_input's parameters, checked at its calls
                    }
                    let at = at.strip_prefix("format!(").unwrap_or(at);
                    found(kind, rust_literal(at), i);
                }
            }
            for marker in ["bad_input(", "ErrorReport::new("] {
                for (i, _) in text.match_indices(marker) {
                    let args = &text[i + marker.len()..];
                    if args.trim_start().starts_with("code:")
                        || args.trim_start().starts_with("code,")
                    {
                        continue; // the definition, or its own ErrorReport
                    }
                    let mut rest = &args[args.find(',').unwrap() + 1..];
                    let kinds: &[&str] = if marker == "bad_input(" {
                        &["MESSAGE", "DETAIL", "HINT"]
                    } else {
                        &["MESSAGE"]
                    };
                    for kind in kinds {
                        let at = rest.trim_start();
                        let (at, depth) = match at.strip_prefix("format!(") {
                            Some(inner) => (inner, 1),
                            None => (at, 0),
                        };
                        let literal = rust_literal(at);
                        if let Some((_, after)) = &literal {
                            rest = next_argument(after, depth);
                        }
                        found(kind, literal, i);
                    }
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} error texts found: the scan is broken"
    );
    assert!(
        problems.is_empty(),
        "error texts out of style ({checked} checked):\n{}",
        problems.join("\n")
    );
}

#[test]
fn every_setting_of_the_library_is_in_the_settings_table() {
    let mut client = ext_db();
    // Any call of the library loads it, and with it its settings.
    client.batch_execute("SELECT credits._now()").unwrap();
    let settings = rows(
        &mut client,
        "SELECT name FROM pg_settings WHERE name LIKE 'credits.%' ORDER BY 1",
    );
    assert!(!settings.is_empty(), "the library defines no setting");
    let section = &README[README.find("\n## Settings").unwrap()..];
    let section = &section[..section[1..].find("\n## ").unwrap()];
    let missing: Vec<_> = settings
        .iter()
        .filter(|s| !section.contains(&format!("| `{s}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "settings missing from the README's Settings table: {missing:?}"
    );
}

/// Ways to read the clock other than credits._now(), in lower case: SQL's
/// functions and literals and the library's calls.
const CLOCK_READS: [&str; 19] = [
    "now()",
    "'now'::",
    "'today'::",
    "timestamptz 'now'",
    "timestamp 'now'",
    "date 'today'",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "current_timestamp",
    "current_date",
    "current_time",
    "localtimestamp",
    "localtime",
    "timeofday",
    "getcurrenttimestamp",
    "startofstatementtimestamp",
    "systemtime::",
    "instant::now",
];

/// Every code line of the SQL files and of the library (outside its tests),
/// with its `--` or `//` comment cut off, as `file:line: text` and the
/// code: what the static checks below read.
fn code_lines() -> Vec<(String, String, bool)> {
    let mut lines = Vec::new();
    for path in source_files("sql", "sql")
        .into_iter()
        .chain(source_files("src", "rs"))
    {
        let text = std::fs::read_to_string(&path).unwrap();
        let rust = path.extension().is_some_and(|e| e == "rs");
        let code = if rust {
            text.split("#[cfg(any(test, feature = \"pg_test\"))]")
                .next()
                .unwrap()
        } else {
            &text
        };
        for (n, line) in code.lines().enumerate() {
            let kept = if rust {
                line.split("//").next().unwrap()
            } else {
                strip_comment(line)
            };
            let at = format!("{}:{}: {}", path.display(), n + 1, line.trim());
            lines.push((at, kept.to_string(), rust));
        }
    }
    lines
}

/// Fails naming the `file:line: text` lines that a static check found.
fn assert_no_lines(what: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{what}:\n{}", found.join("\n"));
}

/// The lines of the SQL files and of the library (outside its tests and
/// src/clock.rs) that read the clock other than through credits._now().
fn clock_reads() -> Vec<String> {
    code_lines()
        .into_iter()
        .filter(|(at, code, _)| {
            let lower = code.to_lowercase();
            !at.contains("src/clock.rs:")
                && CLOCK_READS.iter().any(|clock| {
                    lower.match_indices(clock).any(|(i, _)| {
                        // credits._now() and the like are other names.
                        !lower[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c == '_' || c.is_ascii_alphanumeric())
                    })
                })
        })
        .map(|(at, _, _)| at)
        .collect()
}

/// Every read of the clock goes through credits._now() (src/clock.rs), so
/// that the superuser-only setting credits.now pins all of them (README,
/// Settings): no SQL file and no library source outside src/clock.rs and
/// the library's tests reads the clock itself.
#[test]
fn every_read_of_the_clock_goes_through_credits_now() {
    assert_no_lines(
        "reads of the clock that do not go through credits._now()",
        clock_reads(),
    );
}

/// The divisions that the SQL files and the library may make: a rounded
/// quotient is what they show. Every figure of money is multiplied, never
/// divided, since Postgres rounds a numeric quotient to about 16
/// significant digits (a quote or a usage alert of a figure above 10^12
/// lost micro-credits that way; README, Upgrading).
const DIVISIONS_ALLOWED: [&str; 2] = [
    // days until the reset, rounded up to a whole day
    "extract(epoch FROM v_end - p_now) / 86400",
    // the usage ring's percent, rounded to 2 decimals
    "round(100 * s.used / s.allocation, 2)",
];

/// The lines of the SQL files (outside comments and string literals) with a
/// `/`, and of the library with a ` / `, that are not one of
/// DIVISIONS_ALLOWED.
fn divisions() -> Vec<String> {
    code_lines()
        .into_iter()
        .filter(|(at, code, rust)| {
            !DIVISIONS_ALLOWED.iter().any(|d| at.contains(d))
                && if *rust {
                    code.contains(" / ")
                } else {
                    // Outside string literals: every other quote toggles.
                    code.split('\'').step_by(2).any(|c| c.contains('/'))
                }
        })
        .map(|(at, _, _)| at)
        .collect()
}

/// No figure of money is divided (DIVISIONS_ALLOWED): the SQL files and the
/// library multiply by 0.000001, 0.001 and the like, which numeric does
/// exactly.
#[test]
fn money_is_multiplied_never_divided() {
    assert_no_lines(
        "divisions, which Postgres rounds to about 16 significant digits (multiply instead, or add a \
         division that only shows a rounded figure to DIVISIONS_ALLOWED)",
        divisions(),
    );
}

#[cfg(test)]
mod parser {
    use super::*;

    #[test]
    fn a_signature_reads_its_parameters_defaults_and_return_type() {
        let code = "x\ncredits_f(a text, b numeric DEFAULT 1,  \n  c text[] DEFAULT '{x,y}')   RETURNS TABLE (v text,\n w int)\n";
        let (params, returns) = documented(code, "credits_f").unwrap();
        assert_eq!(
            params,
            vec![
                Param {
                    name: "a".into(),
                    ty: "text".into(),
                    default: None
                },
                Param {
                    name: "b".into(),
                    ty: "numeric".into(),
                    default: Some("1".into())
                },
                Param {
                    name: "c".into(),
                    ty: "text[]".into(),
                    default: Some("'{x,y}'".into())
                },
            ]
        );
        assert_eq!(returns, "table(v text, w int)");
        assert!(documented(code, "credits").is_none());
        let examples =
            "SELECT credits_f(a => 1);\ncredits_f(a => 1)\ncredits_g()\ncredits_g() RETURNS void\n";
        assert!(documented(examples, "credits_f").is_none());
        assert_eq!(
            documented(examples, "credits_g"),
            Some((vec![], "void".to_string()))
        );
        assert_eq!(strip_comment("a -- b"), "a ");
        assert_eq!(strip_comment("'--' -- b"), "'--' ");
    }
}

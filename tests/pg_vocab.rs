//! cbdr's PostgreSQL vocabulary (`cbdr::pg::quote`, `cbdr::pg::conf`)
//! against a real PostgreSQL 15 server: `quote_ident` agrees with the
//! server's own for every keyword of `pg_get_keywords()` (cbdr may quote
//! more: the words only a newer PostgreSQL reserves), literals read back
//! as they were, and `postgresql.conf` values survive the config parser.

mod common;

use std::collections::BTreeMap;

use cbdr::pg::conf::quote_value;
use cbdr::pg::quote::{keyword_since, quote_ident, quote_literal};
use common::pg::PgServer;

fn major(server: &PgServer) -> u32 {
    server
        .psql("show server_version_num")
        .parse::<u32>()
        .unwrap()
        / 10000
}

#[test]
fn quote_ident_agrees_with_the_server_for_every_keyword() {
    let server = PgServer::new();
    let major = major(&server);
    let rows = server.psql("select word, catcode, quote_ident(word) from pg_get_keywords()");
    let mut server_quotes = BTreeMap::new();
    let mut wrong = Vec::new();
    for line in rows.lines() {
        let cols: Vec<&str> = line.split('|').collect();
        let [word, catcode, theirs] = cols[..] else {
            panic!("unexpected row {line:?}");
        };
        let ours = quote_ident(word);
        let since = keyword_since(word);
        server_quotes.insert(word.to_string(), catcode != "U");
        let newer = since.is_some_and(|v| v > major);
        if ours != theirs && !(newer && theirs == word) {
            wrong.push(format!("{word} ({catcode}): server {theirs}, cbdr {ours}"));
        }
        if (catcode != "U") != since.is_some_and(|v| v <= major) {
            wrong.push(format!(
                "{word}: category {catcode} on PostgreSQL {major}, cbdr says since {since:?}"
            ));
        }
    }
    assert!(
        server_quotes.len() > 400,
        "{} keywords",
        server_quotes.len()
    );
    assert!(
        wrong.is_empty(),
        "quote_ident disagrees:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn quote_ident_and_literal_agree_with_the_server_for_odd_names() {
    let server = PgServer::new();
    let names = [
        "plain",
        "_x",
        "x1",
        "Mixed",
        "1x",
        "a b",
        "a.b",
        "a$b",
        "say \"hi\"",
        "it's",
        r"back\slash",
        "ünïcode",
        "",
        "system_user",
        "name",
        "x\ty",
    ];
    for name in names {
        if name.is_empty() {
            continue; // quote_ident('') is '""', not an identifier anyway
        }
        let lit = quote_literal(name);
        let theirs = server.psql(&format!("select quote_ident({lit})"));
        if keyword_since(name).is_some_and(|v| v > major(&server)) {
            continue;
        }
        assert_eq!(quote_ident(name), theirs, "{name:?}");
        // The literal reads back as the same text.
        let back = server.psql(&format!("select {lit} = $cbdr${name}$cbdr$"));
        assert_eq!(back, "t", "{lit}");
    }
    // An identifier quoted by cbdr names the same object.
    for name in ["Mixed", "a$b", "say \"hi\"", "system_user", "select"] {
        let q = quote_ident(name);
        server.psql(&format!("create table {q} (x int)"));
        let back = server.psql(&format!(
            "select relname from pg_class where oid = '{}'::regclass",
            q.replace('\'', "''")
        ));
        assert_eq!(back, name);
    }
}

#[test]
fn conf_values_survive_the_config_parser() {
    let server = PgServer::new();
    let values = [
        "cbdr wal-fetch %f %p",
        r"C:\wal\%f",
        "it's",
        r"it\'s",
        r"\n is not a newline",
        "trailing \\",
    ];
    let mut conf = String::new();
    for (i, v) in values.iter().enumerate() {
        conf.push_str(&format!("cbdr_test.v{i} = {}\n", quote_value(v)));
    }
    server.append_conf(&conf);
    server.psql("select pg_reload_conf()");
    server.wait_until(
        |s| {
            s.try_psql("select current_setting('cbdr_test.v0', true)")
                .is_ok_and(|v| v == values[0])
        },
        std::time::Duration::from_secs(30),
    );
    for (i, v) in values.iter().enumerate() {
        let got = server.psql(&format!("select current_setting('cbdr_test.v{i}')"));
        assert_eq!(&got, v, "value {i}");
    }
}

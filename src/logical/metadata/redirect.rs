//! `--redirect-schema`: move entries from one schema to another by
//! rewriting the schema-qualified names in their statements.
//!
//! Statements are tokenized as SQL (comments, string literals of every
//! kind, dollar quotes, quoted identifiers), and only these are rewritten:
//! * `old.` in a qualified name (`old.t`, `"old".t`, not `x.old.t`);
//! * the schema named after the keyword SCHEMA (`CREATE SCHEMA old`,
//!   `ON SCHEMA old`, `IN SCHEMA old`, `WITH SCHEMA old`);
//! * inside a string literal cast to an object-identifier type
//!   (`'old.seq'::regclass`, `'old.f(old.t)'::regprocedure`), which is how
//!   defaults and sequence values name their sequences.
//!
//! Everything else inside string literals and dollar-quoted function
//! bodies stays as it is: a function body that names `old.t` still does
//! after the redirect. A table alias spelled like the old schema and
//! followed by a dot (`SELECT old.col FROM s.t old`) would be rewritten
//! too; PostgreSQL's deparsed views use table names as aliases, so this
//! only happens when a table is named like the schema being moved.

use crate::logical::toc::{ObjectKind, QualifiedName, TocEntry};
use crate::pg::quote::{is_ident_char, is_ident_start, parse_ident, quote_ident, quote_literal};

/// Rewrite `entry` for a restore into schema `to` instead of `from`: the
/// statement's references to `from`, the entry's schema and owner table,
/// and the schema part of its name where it has one (schemas, functions'
/// argument types).
pub fn redirect_schema(entry: &TocEntry, from: &str, to: &str) -> TocEntry {
    let mut e = entry.clone();
    e.statement = rewrite_sql(&entry.statement, from, to);
    if e.schema == from {
        e.schema = to.to_string();
    }
    if let Some(t) = &mut e.owner_table {
        if t.schema == from {
            *t = QualifiedName {
                schema: to.to_string(),
                name: t.name.clone(),
            };
        }
    }
    if e.kind == ObjectKind::Schema && e.name == from {
        e.name = to.to_string();
    } else if e.name == format!("SCHEMA {from}") {
        e.name = format!("SCHEMA {to}");
    } else if e.name.contains('(') {
        // Functions: `f(integer, old.t)`.
        e.name = rewrite_sql(&e.name, from, to);
    }
    e
}

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    /// An identifier; `name` is what it means (case-folded unless quoted).
    Ident {
        name: String,
        quoted: bool,
    },
    /// A string literal (any kind); `value` is its content when it could
    /// be decoded.
    Str {
        value: Option<String>,
    },
    Dot,
    DoubleColon,
    Other,
}

#[derive(Debug, Clone)]
struct Token {
    start: usize,
    end: usize,
    kind: Kind,
}

/// Split SQL into tokens (whitespace and comments dropped).
fn tokenize(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = sql[i..].find('\n').map_or(b.len(), |k| i + k + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                while i < b.len() {
                    if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
            }
            b'\'' => {
                let (end, value) = standard_string(sql, i);
                i = end;
                out.push(Token {
                    start,
                    end,
                    kind: Kind::Str { value: Some(value) },
                });
            }
            b'"' => {
                let (end, name) = match parse_ident(&sql[i..]) {
                    Some((name, rest)) => (sql.len() - rest.len(), name),
                    None => (sql.len(), String::new()),
                };
                i = end;
                out.push(Token {
                    start,
                    end,
                    kind: Kind::Ident { name, quoted: true },
                });
            }
            b'$' => {
                if let Some(end) = dollar_string_end(sql, i) {
                    i = end;
                    out.push(Token {
                        start,
                        end,
                        kind: Kind::Str { value: None },
                    });
                } else {
                    // A parameter ($1) or a stray dollar.
                    i += 1;
                    while i < b.len() && b[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.push(Token {
                        start,
                        end: i,
                        kind: Kind::Other,
                    });
                }
            }
            b'.' => {
                i += 1;
                out.push(Token {
                    start,
                    end: i,
                    kind: Kind::Dot,
                });
            }
            b':' if b.get(i + 1) == Some(&b':') => {
                i += 2;
                out.push(Token {
                    start,
                    end: i,
                    kind: Kind::DoubleColon,
                });
            }
            b'0'..=b'9' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                // A fraction belongs to the number; `1.x` cannot name anything.
                if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                    while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                        i += 1;
                    }
                }
                out.push(Token {
                    start,
                    end: i,
                    kind: Kind::Other,
                });
            }
            _ => {
                let ch = sql[i..].chars().next().expect("in bounds");
                if is_ident_start(ch) {
                    let mut end = i;
                    for (k, ch) in sql[i..].char_indices() {
                        if !is_ident_char(ch) {
                            break;
                        }
                        end = i + k + ch.len_utf8();
                    }
                    let word = &sql[i..end];
                    let next = b.get(end).copied();
                    let lower = word.to_ascii_lowercase();
                    if next == Some(b'\'') && matches!(lower.as_str(), "e" | "b" | "x" | "n") {
                        // E'...' (backslash escapes), B'..', X'..', N'..'.
                        let (send, value) = if lower == "e" {
                            escape_string(sql, end)
                        } else {
                            let (send, value) = standard_string(sql, end);
                            (send, if lower == "n" { Some(value) } else { None })
                        };
                        i = send;
                        out.push(Token {
                            start,
                            end: i,
                            kind: Kind::Str { value },
                        });
                    } else if lower == "u" && sql[end..].starts_with("&'") {
                        let (send, _) = standard_string(sql, end + 1);
                        i = send;
                        out.push(Token {
                            start,
                            end: i,
                            kind: Kind::Str { value: None },
                        });
                    } else if lower == "u" && sql[end..].starts_with("&\"") {
                        // Unicode-escaped identifier: kept as it is.
                        let send = match parse_ident(&sql[end + 1..]) {
                            Some((_, rest)) => sql.len() - rest.len(),
                            None => sql.len(),
                        };
                        i = send;
                        out.push(Token {
                            start,
                            end: i,
                            kind: Kind::Other,
                        });
                    } else {
                        i = end;
                        out.push(Token {
                            start,
                            end,
                            kind: Kind::Ident {
                                name: lower,
                                quoted: false,
                            },
                        });
                    }
                } else {
                    i += ch.len_utf8();
                    out.push(Token {
                        start,
                        end: i,
                        kind: Kind::Other,
                    });
                }
            }
        }
    }
    out
}

/// `'...'` starting at `i` (standard conforming: `''` is a quote): the end
/// offset and the content.
fn standard_string(sql: &str, i: usize) -> (usize, String) {
    let b = sql.as_bytes();
    let mut value = String::new();
    let mut k = i + 1;
    let mut run = k;
    while k < b.len() {
        if b[k] == b'\'' {
            value.push_str(&sql[run..k]);
            if b.get(k + 1) == Some(&b'\'') {
                value.push('\'');
                k += 2;
                run = k;
                continue;
            }
            return (k + 1, value);
        }
        k += 1;
    }
    value.push_str(&sql[run..]);
    (b.len(), value)
}

/// `E'...'`'s quoted part starting at `i` (the quote): the end offset and,
/// when it has only simple escapes, the content.
fn escape_string(sql: &str, i: usize) -> (usize, Option<String>) {
    let b = sql.as_bytes();
    let mut value = Some(String::new());
    let mut k = i + 1;
    while k < b.len() {
        match b[k] {
            b'\\' => {
                let next = sql[k + 1..].chars().next();
                match next {
                    Some(ch @ ('\\' | '\'' | '"')) => {
                        if let Some(v) = &mut value {
                            v.push(ch);
                        }
                    }
                    Some(_) => value = None, // \n, \x41...: content not needed
                    None => {}
                }
                k += 1 + next.map_or(0, char::len_utf8);
            }
            b'\'' if b.get(k + 1) == Some(&b'\'') => {
                if let Some(v) = &mut value {
                    v.push('\'');
                }
                k += 2;
            }
            b'\'' => return (k + 1, value),
            _ => {
                let ch = sql[k..].chars().next().expect("in bounds");
                if let Some(v) = &mut value {
                    v.push(ch);
                }
                k += ch.len_utf8();
            }
        }
    }
    (b.len(), value)
}

/// End of a dollar-quoted string starting at `i` (`$tag$...$tag$`), or
/// None when `$` does not open one.
fn dollar_string_end(sql: &str, i: usize) -> Option<usize> {
    let rest = &sql[i + 1..];
    let close = rest.find('$')?;
    let tag_body = &rest[..close];
    if tag_body.chars().next().is_some_and(|c| !is_ident_start(c))
        || !tag_body.chars().all(|c| is_ident_char(c) && c != '$')
    {
        return None;
    }
    let tag = &sql[i..i + close + 2];
    let body_start = i + tag.len();
    Some(match sql[body_start..].find(tag) {
        Some(p) => body_start + p + tag.len(),
        None => sql.len(),
    })
}

/// Object-identifier types whose literals name schema objects.
fn is_reg_type(name: &str) -> bool {
    matches!(
        name,
        "regclass"
            | "regtype"
            | "regproc"
            | "regprocedure"
            | "regoper"
            | "regoperator"
            | "regconfig"
            | "regdictionary"
            | "regcollation"
            | "regnamespace"
    )
}

/// If the tokens from `k` are `::regclass` (or `::pg_catalog.regclass`),
/// the cast type's name.
fn reg_cast_at(tokens: &[Token], k: usize) -> Option<&str> {
    if !matches!(tokens.get(k).map(|t| &t.kind), Some(Kind::DoubleColon)) {
        return None;
    }
    let mut k = k + 1;
    if let (Some(Kind::Ident { name, .. }), Some(Kind::Dot)) = (
        tokens.get(k).map(|t| &t.kind),
        tokens.get(k + 1).map(|t| &t.kind),
    ) {
        if name == "pg_catalog" {
            k += 2;
        }
    }
    match tokens.get(k).map(|t| &t.kind) {
        Some(Kind::Ident { name, .. }) if is_reg_type(name) => Some(name.as_str()),
        _ => None,
    }
}

/// `sql` with the references to schema `from` pointing at `to`.
pub(crate) fn rewrite_sql(sql: &str, from: &str, to: &str) -> String {
    let tokens = tokenize(sql);
    let is_from = |t: &Token| matches!(&t.kind, Kind::Ident { name, .. } if name == from);
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (k, tok) in tokens.iter().enumerate() {
        match &tok.kind {
            Kind::Ident { .. } if is_from(tok) => {
                let prev_dot = k > 0 && tokens[k - 1].kind == Kind::Dot;
                let next_dot = tokens.get(k + 1).is_some_and(|t| t.kind == Kind::Dot);
                let word = |i: usize, w: &str| matches!(&tokens[i].kind, Kind::Ident { name, quoted: false } if name == w);
                let after_schema = (k >= 1 && word(k - 1, "schema"))
                    || (k >= 4
                        && word(k - 4, "schema")
                        && word(k - 3, "if")
                        && word(k - 2, "not")
                        && word(k - 1, "exists"));
                if (next_dot && !prev_dot) || (after_schema && !next_dot) {
                    edits.push((tok.start, tok.end, quote_ident(to)));
                }
            }
            Kind::Str { value: Some(value) } => {
                let Some(reg) = reg_cast_at(&tokens, k + 1) else {
                    continue;
                };
                let new_value = if reg == "regnamespace" {
                    match parse_ident(value) {
                        Some((name, rest)) if name == from && rest.is_empty() => quote_ident(to),
                        _ => continue,
                    }
                } else {
                    rewrite_sql(value, from, to)
                };
                if new_value != *value {
                    edits.push((tok.start, tok.end, quote_literal(&new_value)));
                }
            }
            _ => {}
        }
    }
    if edits.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16 * edits.len());
    let mut pos = 0;
    for (start, end, text) in edits {
        out.push_str(&sql[pos..start]);
        out.push_str(&text);
        pos = end;
    }
    out.push_str(&sql[pos..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::toc::Section;

    fn rw(sql: &str) -> String {
        rewrite_sql(sql, "zoo", "zoo2")
    }

    #[test]
    fn qualified_names_are_rewritten() {
        assert_eq!(
            rw("CREATE TABLE zoo.t (a zoo.mood);"),
            "CREATE TABLE zoo2.t (a zoo2.mood);"
        );
        assert_eq!(
            rw("SELECT * FROM \"zoo\".\"T\""),
            "SELECT * FROM zoo2.\"T\""
        );
        assert_eq!(rw("SELECT * FROM ZOO.t"), "SELECT * FROM zoo2.t");
        assert_eq!(rw("x::zoo.mood[]"), "x::zoo2.mood[]");
        // Not the schema: other identifiers, a quoted upper-case name, the
        // middle of a three-part name, a bare word.
        for same in [
            "SELECT * FROM zoo_x.t, xzoo.t, \"ZOO\".t, a.zoo.b",
            "SELECT zoo FROM t",
            "CREATE TABLE t (zoo integer)",
        ] {
            assert_eq!(rw(same), same);
        }
        // The new schema needs quotes.
        assert_eq!(rewrite_sql("zoo.t", "zoo", "New Zoo"), "\"New Zoo\".t");
        assert_eq!(rewrite_sql("zoo.t", "zoo", "select"), "\"select\".t");
    }

    #[test]
    fn literals_comments_and_bodies_are_left_alone() {
        for same in [
            "SELECT 'zoo.t' AS lit FROM s.t",
            "SELECT E'zoo.t\\'zoo.x' FROM s.t",
            "SELECT 'it''s zoo.t' FROM s.t",
            "CREATE FUNCTION s.f() RETURNS int LANGUAGE sql AS $$ SELECT 1 FROM zoo.t $$;",
            "CREATE FUNCTION s.f() RETURNS int LANGUAGE sql AS $body$ SELECT '$$' FROM zoo.t $body$;",
            "-- zoo.t\nSELECT 1",
            "/* zoo.t /* nested zoo.x */ zoo.y */ SELECT 1",
            "SET search_path TO 'zoo', 'public'",
            "SELECT U&'zoo.t', B'0101', X'ff'",
        ] {
            assert_eq!(rw(same), same, "{same}");
        }
        // ...while the code around them is rewritten.
        assert_eq!(
            rw("CREATE FUNCTION zoo.f() RETURNS zoo.t LANGUAGE sql AS $$ SELECT zoo.t $$;"),
            "CREATE FUNCTION zoo2.f() RETURNS zoo2.t LANGUAGE sql AS $$ SELECT zoo.t $$;"
        );
        assert_eq!(
            rw("SELECT 'zoo.' || zoo.f($1)"),
            "SELECT 'zoo.' || zoo2.f($1)"
        );
    }

    #[test]
    fn quoted_names_with_dots() {
        assert_eq!(
            rw("SELECT * FROM zoo.\"a.b\""),
            "SELECT * FROM zoo2.\"a.b\""
        );
        assert_eq!(
            rewrite_sql("SELECT * FROM \"zoo.x\".t, zoo.t", "zoo.x", "y"),
            "SELECT * FROM y.t, zoo.t"
        );
        assert_eq!(
            rewrite_sql("SELECT * FROM \"zoo.x\".\"zoo.x\"", "zoo.x", "y"),
            "SELECT * FROM y.\"zoo.x\""
        );
        assert_eq!(
            rewrite_sql("SELECT * FROM \"Mixed \"\"S\"\"\".t", "Mixed \"S\"", "m"),
            "SELECT * FROM m.t"
        );
    }

    #[test]
    fn object_identifier_literals_are_rewritten() {
        assert_eq!(
            rw("nextval('zoo.\"Odd.Seq\"'::regclass)"),
            "nextval('zoo2.\"Odd.Seq\"'::regclass)"
        );
        assert_eq!(
            rw("SELECT pg_catalog.setval('zoo.s'::pg_catalog.regclass, 5, true);"),
            "SELECT pg_catalog.setval('zoo2.s'::pg_catalog.regclass, 5, true);"
        );
        assert_eq!(
            rw("'zoo.f(zoo.mood, integer)'::regprocedure"),
            "'zoo2.f(zoo2.mood, integer)'::regprocedure"
        );
        assert_eq!(rw("'zoo'::regnamespace"), "'zoo2'::regnamespace");
        assert_eq!(
            rewrite_sql("'\"Mixed \"\"S\"\"\".t'::regclass", "Mixed \"S\"", "it's"),
            "'\"it''s\".t'::regclass"
        );
        // A plain literal is data.
        assert_eq!(rw("'zoo.s'::text"), "'zoo.s'::text");
    }

    #[test]
    fn schema_keyword_forms() {
        assert_eq!(
            rw("CREATE SCHEMA IF NOT EXISTS zoo;"),
            "CREATE SCHEMA IF NOT EXISTS zoo2;"
        );
        assert_eq!(
            rw("ALTER SCHEMA zoo OWNER TO r;"),
            "ALTER SCHEMA zoo2 OWNER TO r;"
        );
        assert_eq!(
            rw("COMMENT ON SCHEMA zoo IS 'zoo';"),
            "COMMENT ON SCHEMA zoo2 IS 'zoo';"
        );
        assert_eq!(
            rw("GRANT USAGE ON SCHEMA \"zoo\" TO r;"),
            "GRANT USAGE ON SCHEMA zoo2 TO r;"
        );
        assert_eq!(
            rw("ALTER DEFAULT PRIVILEGES FOR ROLE r IN SCHEMA zoo GRANT SELECT ON TABLES TO x;"),
            "ALTER DEFAULT PRIVILEGES FOR ROLE r IN SCHEMA zoo2 GRANT SELECT ON TABLES TO x;"
        );
        assert_eq!(rw("CREATE SCHEMA other;"), "CREATE SCHEMA other;");
    }

    #[test]
    fn entry_fields_follow() {
        let e = TocEntry {
            id: 3,
            section: Section::PreData,
            kind: "FUNCTION".into(),
            schema: "zoo".into(),
            name: "f(zoo.mood)".into(),
            owner_table: None,
            depends_on: vec![1],
            statement: "CREATE OR REPLACE FUNCTION zoo.f(m zoo.mood) RETURNS text LANGUAGE sql AS $$ SELECT 'zoo.x' $$;".into(),
        };
        let r = redirect_schema(&e, "zoo", "z2");
        assert_eq!(r.schema, "z2");
        assert_eq!(r.name, "f(z2.mood)");
        assert_eq!(
            r.statement,
            "CREATE OR REPLACE FUNCTION z2.f(m z2.mood) RETURNS text LANGUAGE sql AS $$ SELECT 'zoo.x' $$;"
        );
        assert_eq!(r.depends_on, vec![1]);
        let idx = TocEntry {
            kind: "INDEX".into(),
            name: "i".into(),
            owner_table: Some(QualifiedName {
                schema: "zoo".into(),
                name: "t".into(),
            }),
            statement: "CREATE INDEX i ON zoo.t USING btree (zoo.f(a));".into(),
            ..e.clone()
        };
        let r = redirect_schema(&idx, "zoo", "z2");
        assert_eq!(r.owner_table.unwrap().schema, "z2");
        assert_eq!(r.statement, "CREATE INDEX i ON z2.t USING btree (z2.f(a));");
        let schema = TocEntry {
            kind: "SCHEMA".into(),
            schema: String::new(),
            name: "zoo".into(),
            statement: "CREATE SCHEMA IF NOT EXISTS zoo;".into(),
            ..e.clone()
        };
        let r = redirect_schema(&schema, "zoo", "z2");
        assert_eq!(
            (r.name.as_str(), r.statement.as_str()),
            ("z2", "CREATE SCHEMA IF NOT EXISTS z2;")
        );
        let other = TocEntry {
            schema: "sales".into(),
            name: "orders".into(),
            kind: "TABLE".into(),
            statement: "CREATE TABLE sales.orders (m zoo.mood);".into(),
            ..e
        };
        let r = redirect_schema(&other, "zoo", "z2");
        assert_eq!(r.schema, "sales");
        assert_eq!(r.statement, "CREATE TABLE sales.orders (m z2.mood);");
    }

    #[test]
    fn tokenizer_survives_unterminated_input() {
        for s in [
            "'open",
            "\"open",
            "$tag$ open",
            "/* open",
            "E'open\\",
            "zoo.",
            "$",
            "U&",
        ] {
            let _ = rw(s);
        }
    }
}

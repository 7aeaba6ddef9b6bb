//! Quoting of SQL identifiers and literals, as PostgreSQL's own
//! `quote_ident` / `quote_literal` do it.

use crate::logical::toc::QualifiedName;

/// PostgreSQL 15 keywords that are not "unreserved" (reserved, column-name
/// and type/function-name keywords): as identifiers they need quotes.
/// `SELECT word FROM pg_get_keywords() WHERE catcode <> 'U'`, sorted.
const QUOTED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// `name` as an SQL identifier: unchanged when it is a lower-case plain
/// identifier that is not a keyword needing quotes, else in double quotes
/// with inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let plain = !name.is_empty()
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$')
        && QUOTED_KEYWORDS.binary_search(&name).is_err();
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `schema.name`, each part quoted as needed.
pub fn quote_qualified(name: &QualifiedName) -> String {
    format!("{}.{}", quote_ident(&name.schema), quote_ident(&name.name))
}

/// `value` as an SQL string literal. Like PostgreSQL's `quote_literal`:
/// `'...'` with quotes doubled, or `E'...'` (backslashes doubled too) when
/// it contains a backslash, so it reads the same whatever
/// `standard_conforming_strings` says.
pub fn quote_literal(value: &str) -> String {
    let body = value.replace('\'', "''");
    if value.contains('\\') {
        format!("E'{}'", body.replace('\\', "\\\\"))
    } else {
        format!("'{body}'")
    }
}

/// `body` between dollar quotes whose tag does not occur in it.
pub fn dollar_quote(body: &str) -> String {
    let mut tag = String::from("$cbdr$");
    let mut n = 0;
    while body.contains(&tag) {
        n += 1;
        tag = format!("$cbdr{n}$");
    }
    format!("{tag}{body}{tag}")
}

/// Parse an identifier as SQL reads it: `"..."` keeps its text (with `""`
/// for a quote), an unquoted one is folded to lower case. Returns the name
/// and the rest of the input after it; `None` when `s` does not start with
/// an identifier.
pub fn parse_ident(s: &str) -> Option<(String, &str)> {
    if let Some(rest) = s.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = rest.char_indices();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if rest[i + 1..].starts_with('"') {
                    name.push('"');
                    chars.next();
                } else {
                    return Some((name, &rest[i + 1..]));
                }
            } else {
                name.push(c);
            }
        }
        return None;
    }
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let ok = if i == 0 {
            is_ident_start(c)
        } else {
            is_ident_char(c)
        };
        if !ok {
            break;
        }
        end = i + c.len_utf8();
    }
    if end == 0 {
        return None;
    }
    Some((s[..end].to_ascii_lowercase(), &s[end..]))
}

/// First character of an unquoted identifier.
pub(crate) fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

/// Further characters of an unquoted identifier.
pub(crate) fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        let mut sorted = QUOTED_KEYWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, QUOTED_KEYWORDS);
    }

    #[test]
    fn quote_ident_like_postgres() {
        assert_eq!(quote_ident("zoo"), "zoo");
        assert_eq!(quote_ident("zoo_2$x"), "zoo_2$x");
        assert_eq!(quote_ident("_x"), "_x");
        assert_eq!(quote_ident("Zoo"), "\"Zoo\"");
        assert_eq!(quote_ident("2x"), "\"2x\"");
        assert_eq!(quote_ident("a b"), "\"a b\"");
        assert_eq!(quote_ident("a.b"), "\"a.b\"");
        assert_eq!(quote_ident("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        // Unreserved keywords stay plain, as in PostgreSQL.
        assert_eq!(quote_ident("name"), "name");
        assert_eq!(quote_ident("ünï"), "\"ünï\"");
        assert_eq!(quote_ident(""), "\"\"");
    }

    #[test]
    fn quote_literal_like_postgres() {
        assert_eq!(quote_literal("abc"), "'abc'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal(r"a\b'c"), r"E'a\\b''c'");
        assert_eq!(quote_literal(""), "''");
    }

    #[test]
    fn dollar_quote_avoids_its_tag() {
        assert_eq!(dollar_quote("x"), "$cbdr$x$cbdr$");
        assert_eq!(dollar_quote("a $cbdr$ b"), "$cbdr1$a $cbdr$ b$cbdr1$");
    }

    #[test]
    fn parse_ident_quoted_and_plain() {
        assert_eq!(parse_ident("Zoo.t"), Some(("zoo".into(), ".t")));
        assert_eq!(parse_ident("\"Zoo\".t"), Some(("Zoo".into(), ".t")));
        assert_eq!(parse_ident("\"a\"\"b.c\"x"), Some(("a\"b.c".into(), "x")));
        assert_eq!(parse_ident("ünï.x"), Some(("ünï".into(), ".x")));
        assert_eq!(parse_ident("x$1 y"), Some(("x$1".into(), " y")));
        assert_eq!(parse_ident(".x"), None);
        assert_eq!(parse_ident("1x"), None);
        assert_eq!(parse_ident("\"open"), None);
    }
}

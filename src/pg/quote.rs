//! Quoting for PostgreSQL: identifiers as the server's `quote_ident()`
//! writes them (with the keyword list of the newest PostgreSQL), SQL string
//! literals as `quote_literal()` does, qualified names, dollar quoting, and
//! the reverse: reading an identifier as the SQL parser does.
//!
//! `postgresql.conf` values are not SQL literals: see [`super::conf`].

/// The keywords that are not "unreserved" (reserved, column-name and
/// type/function-name keywords), so that `quote_ident()` quotes them, with
/// the major version since which they are: 15 means "15 or before". From
/// PostgreSQL's `src/include/parser/kwlist.h` (`catcode <> 'U'` in
/// `pg_get_keywords()`), sorted for binary search. Quoting a word that an
/// older server would take plain is harmless; a name dumped unquoted that
/// a newer server reserves is not (a table named `system_user` restores
/// on 16 only when quoted).
const KEYWORDS: &[(&str, u32)] = &[
    ("all", 15),
    ("analyse", 15),
    ("analyze", 15),
    ("and", 15),
    ("any", 15),
    ("array", 15),
    ("as", 15),
    ("asc", 15),
    ("asymmetric", 15),
    ("authorization", 15),
    ("between", 15),
    ("bigint", 15),
    ("binary", 15),
    ("bit", 15),
    ("boolean", 15),
    ("both", 15),
    ("case", 15),
    ("cast", 15),
    ("char", 15),
    ("character", 15),
    ("check", 15),
    ("coalesce", 15),
    ("collate", 15),
    ("collation", 15),
    ("column", 15),
    ("concurrently", 15),
    ("constraint", 15),
    ("create", 15),
    ("cross", 15),
    ("current_catalog", 15),
    ("current_date", 15),
    ("current_role", 15),
    ("current_schema", 15),
    ("current_time", 15),
    ("current_timestamp", 15),
    ("current_user", 15),
    ("dec", 15),
    ("decimal", 15),
    ("default", 15),
    ("deferrable", 15),
    ("desc", 15),
    ("distinct", 15),
    ("do", 15),
    ("else", 15),
    ("end", 15),
    ("except", 15),
    ("exists", 15),
    ("extract", 15),
    ("false", 15),
    ("fetch", 15),
    ("float", 15),
    ("for", 15),
    ("foreign", 15),
    ("freeze", 15),
    ("from", 15),
    ("full", 15),
    ("grant", 15),
    ("greatest", 15),
    ("group", 15),
    ("grouping", 15),
    ("having", 15),
    ("ilike", 15),
    ("in", 15),
    ("initially", 15),
    ("inner", 15),
    ("inout", 15),
    ("int", 15),
    ("integer", 15),
    ("intersect", 15),
    ("interval", 15),
    ("into", 15),
    ("is", 15),
    ("isnull", 15),
    ("join", 15),
    ("json", 17),
    ("json_array", 16),
    ("json_arrayagg", 16),
    ("json_exists", 17),
    ("json_object", 16),
    ("json_objectagg", 16),
    ("json_query", 17),
    ("json_scalar", 17),
    ("json_serialize", 17),
    ("json_table", 17),
    ("json_value", 17),
    ("lateral", 15),
    ("leading", 15),
    ("least", 15),
    ("left", 15),
    ("like", 15),
    ("limit", 15),
    ("localtime", 15),
    ("localtimestamp", 15),
    ("merge_action", 17),
    ("national", 15),
    ("natural", 15),
    ("nchar", 15),
    ("none", 15),
    ("normalize", 15),
    ("not", 15),
    ("notnull", 15),
    ("null", 15),
    ("nullif", 15),
    ("numeric", 15),
    ("offset", 15),
    ("on", 15),
    ("only", 15),
    ("or", 15),
    ("order", 15),
    ("out", 15),
    ("outer", 15),
    ("overlaps", 15),
    ("overlay", 15),
    ("placing", 15),
    ("position", 15),
    ("precision", 15),
    ("primary", 15),
    ("real", 15),
    ("references", 15),
    ("returning", 15),
    ("right", 15),
    ("row", 15),
    ("select", 15),
    ("session_user", 15),
    ("setof", 15),
    ("similar", 15),
    ("smallint", 15),
    ("some", 15),
    ("substring", 15),
    ("symmetric", 15),
    ("system_user", 16),
    ("table", 15),
    ("tablesample", 15),
    ("then", 15),
    ("time", 15),
    ("timestamp", 15),
    ("to", 15),
    ("trailing", 15),
    ("treat", 15),
    ("trim", 15),
    ("true", 15),
    ("union", 15),
    ("unique", 15),
    ("user", 15),
    ("using", 15),
    ("values", 15),
    ("varchar", 15),
    ("variadic", 15),
    ("verbose", 15),
    ("when", 15),
    ("where", 15),
    ("window", 15),
    ("with", 15),
    ("xmlattributes", 15),
    ("xmlconcat", 15),
    ("xmlelement", 15),
    ("xmlexists", 15),
    ("xmlforest", 15),
    ("xmlnamespaces", 15),
    ("xmlparse", 15),
    ("xmlpi", 15),
    ("xmlroot", 15),
    ("xmlserialize", 15),
    ("xmltable", 15),
];

/// The major version since which `word` (lower case) needs quoting as an
/// identifier, or `None` when it is not a keyword or an unreserved one.
pub fn keyword_since(word: &str) -> Option<u32> {
    KEYWORDS
        .binary_search_by(|(w, _)| (*w).cmp(word))
        .ok()
        .map(|i| KEYWORDS[i].1)
}

/// `name` as an SQL identifier, exactly as PostgreSQL's `quote_ident()`
/// writes it (with `quote_all_identifiers` off): unchanged when it is made
/// of lower-case ASCII letters, digits and underscores, starts with a
/// letter or underscore and is no keyword needing quotes; else in double
/// quotes with inner double quotes doubled.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && keyword_since(name).is_none();
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// `schema.name`, each part quoted as needed.
pub fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `value` as an SQL string literal, like PostgreSQL's `quote_literal()`:
/// `'...'` with quotes doubled, or `E'...'` (backslashes doubled too) when
/// it contains a backslash, so that it reads the same whatever
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
pub fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || !c.is_ascii()
}

/// Further characters of an unquoted identifier.
pub fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_sorted_for_binary_search() {
        let mut sorted = KEYWORDS.to_vec();
        sorted.sort_unstable();
        assert_eq!(sorted, KEYWORDS);
        assert_eq!(keyword_since("select"), Some(15));
        assert_eq!(keyword_since("system_user"), Some(16));
        assert_eq!(keyword_since("json_table"), Some(17));
        assert_eq!(keyword_since("name"), None);
    }

    #[test]
    fn quote_ident_like_postgres() {
        assert_eq!(quote_ident("zoo"), "zoo");
        assert_eq!(quote_ident("zoo_2x"), "zoo_2x");
        assert_eq!(quote_ident("_x"), "_x");
        // PostgreSQL's quote_ident() quotes a dollar sign.
        assert_eq!(quote_ident("zoo$x"), "\"zoo$x\"");
        assert_eq!(quote_ident("Zoo"), "\"Zoo\"");
        assert_eq!(quote_ident("2x"), "\"2x\"");
        assert_eq!(quote_ident("a b"), "\"a b\"");
        assert_eq!(quote_ident("a.b"), "\"a.b\"");
        assert_eq!(quote_ident("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote_ident("select"), "\"select\"");
        assert_eq!(quote_ident("user"), "\"user\"");
        assert_eq!(quote_ident("system_user"), "\"system_user\"");
        assert_eq!(quote_ident("between"), "\"between\"");
        // Unreserved keywords stay plain, as in PostgreSQL.
        assert_eq!(quote_ident("name"), "name");
        assert_eq!(quote_ident("ünï"), "\"ünï\"");
        assert_eq!(quote_ident(""), "\"\"");
        assert_eq!(qualified("public", "User"), "public.\"User\"");
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

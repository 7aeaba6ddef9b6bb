//! `postgresql.conf` syntax.

/// `value` as a quoted string value in `postgresql.conf` (or
/// `postgresql.auto.conf`). These are not SQL literals: the configuration
/// file parser reads backslash escapes (`\\`, `\n`, `\'`, octal...) in
/// quoted values, and a quote may be written `''`. So backslashes are
/// doubled, quotes doubled, and line breaks (which may not appear inside a
/// quoted value) written as `\n` / `\r`.
pub fn quote_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What PostgreSQL's configuration parser (`GUC_scanstr`) makes of a
    /// quoted value: the reverse of [`quote_value`].
    fn scan(quoted: &str) -> String {
        let inner = &quoted[1..quoted.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next().unwrap() {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    't' => out.push('\t'),
                    other => out.push(other),
                },
                '\'' => {
                    assert_eq!(chars.next(), Some('\''), "a lone quote in {quoted}");
                    out.push('\'');
                }
                c => out.push(c),
            }
        }
        out
    }

    #[test]
    fn quote_value_escapes_what_the_config_parser_reads() {
        assert_eq!(quote_value("immediate"), "'immediate'");
        assert_eq!(quote_value("it's"), "'it''s'");
        assert_eq!(quote_value(r"C:\wal\%f"), r"'C:\\wal\\%f'");
        assert_eq!(quote_value("a\nb"), r"'a\nb'");
        for v in [
            "cbdr wal-fetch %f %p",
            r"cp /mnt/x\ y/%f %p",
            r"it's a \'trap\'",
            "\\",
            "",
            "line\r\nbreak",
        ] {
            let q = quote_value(v);
            assert!(!q.contains('\n'), "{q}");
            assert_eq!(scan(&q), v, "{q}");
        }
    }
}

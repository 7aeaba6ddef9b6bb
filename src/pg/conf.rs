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

/// `text` (a `postgresql.conf` or `postgresql.auto.conf`) with every line
/// that sets one of `settings` removed and `name = 'value'` appended for
/// each: the file then sets each exactly once, to the new value. Names
/// compare case-insensitively, as the server reads them.
pub fn replace_settings(text: &str, settings: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    for line in text.lines() {
        let sets = setting_of_line(line)
            .is_some_and(|n| settings.iter().any(|(s, _)| s.eq_ignore_ascii_case(n)));
        if !sets {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (name, value) in settings {
        out.push_str(&format!("{name} = {}\n", quote_value(value)));
    }
    out
}

/// The setting a line sets (`name = value` or `name value`), if any.
fn setting_of_line(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .unwrap_or(t.len());
    let (name, rest) = t.split_at(end);
    let rest = rest.trim_start();
    (!name.is_empty() && !rest.is_empty() && !rest.starts_with('#')).then_some(name)
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
    fn replace_settings_leaves_one_line_per_setting() {
        let text = "# Do not edit\nport = 5433\nrecovery_target_name = 'a'\n# recovery_target_name = 'old'\nRECOVERY_TARGET_NAME='b'\nrecovery_target_action = 'pause'\n";
        let out = replace_settings(text, &[("recovery_target_name", "rp_2")]);
        assert_eq!(
            out,
            "# Do not edit\nport = 5433\n# recovery_target_name = 'old'\nrecovery_target_action = 'pause'\nrecovery_target_name = 'rp_2'\n"
        );
        assert_eq!(replace_settings("", &[("a", "it's")]), "a = 'it''s'\n");
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

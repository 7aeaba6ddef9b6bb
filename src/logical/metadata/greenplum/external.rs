//! External tables: `CREATE [READABLE|WRITABLE] EXTERNAL [WEB] TABLE`.
//! A backup copies no rows of them (their data is outside the database;
//! on Greenplum 7 and Cloudberry they are foreign tables, relkind 'f',
//! which the data listing leaves out).
//!
//! From Cloudberry's `src/include/catalog/pg_exttable.h` (`reloid`,
//! `urilocation`, `execlocation`, `fmttype`, `fmtopts`, `options`,
//! `command`, `rejectlimit`, `rejectlimittype`, `logerrors`, `encoding`,
//! `writable`; on Greenplum 7 a view of the same columns) and gpbackup's
//! `predata_externals.go` (which kind of table a row is, the `EXECUTE ...
//! ON` clauses, the escaping of `fmtopts`, `LOG ERRORS PERSISTENTLY` from
//! the foreign table's `log_errors=p` option). The row is read as
//! `to_json`, so a column a release lacks is simply absent.
//!
//! **Untested: no Greenplum/Cloudberry build here.**

use serde_json::Value;

use super::super::{generic_options_sql, quote_literal};
use crate::error::{Error, Result};

/// SQL: `reloid`, `ext` (the row as JSON), `encoding_name`, `persistent`
/// (errors are logged persistently) and `protocol_oid` (the custom
/// protocol of its URIs, which must be created first) for the user
/// external tables.
pub(crate) const EXTTABLES_SQL: &str = "SELECT e.reloid, pg_catalog.to_json(e) AS ext, \
     pg_catalog.pg_encoding_to_char(e.encoding) AS encoding_name, \
     coalesce('log_errors=p' = ANY (ft.ftoptions), false) AS persistent, \
     (SELECT x.oid FROM pg_catalog.pg_extprotocol x \
       WHERE x.ptcname = pg_catalog.split_part(e.urilocation[1], '://', 1)) AS protocol_oid \
     FROM pg_catalog.pg_exttable e \
     LEFT JOIN pg_catalog.pg_foreign_table ft ON ft.ftrelid = e.reloid \
     WHERE e.reloid >= 16384";

/// An external table's definition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ExtTable {
    /// `LOCATION` URIs (none for an `EXECUTE` table).
    pub uris: Vec<String>,
    /// `ALL_SEGMENTS`, `HOST:h`, `PER_HOST`, `COORDINATOR_ONLY`,
    /// `MASTER_ONLY`, `SEGMENT_ID:n`, `TOTAL_SEGS:n`.
    pub execlocation: Vec<String>,
    /// 't' text, 'c' csv, 'b' custom, 'a' avro, 'p' parquet.
    pub fmttype: String,
    pub fmtopts: String,
    pub command: Option<String>,
    pub options: Vec<String>,
    pub rejectlimit: i64,
    /// 'r' rows, 'p' percent.
    pub rejectlimittype: String,
    pub log_errors: bool,
    pub log_persistently: bool,
    pub encoding: String,
    pub writable: bool,
}

fn text_array(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_str().map(String::from))
            .collect(),
        _ => Vec::new(),
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    }
}

impl ExtTable {
    /// From the row's JSON and the columns computed beside it.
    pub fn from_row(ext: &Value, encoding: &str, persistent: bool) -> Result<ExtTable> {
        let get = |k: &str| ext.get(k);
        let fmttype = text(get("fmttype")).ok_or_else(|| {
            Error::Server(
                "reading the catalogs (external tables): a pg_exttable row has no fmttype".into(),
            )
        })?;
        // `logerrors` is a bool on Greenplum, a char ('t', 'f', 'p') on
        // Cloudberry.
        let (log_errors, log_char_persistent) = match get("logerrors") {
            Some(Value::Bool(b)) => (*b, false),
            Some(Value::String(s)) => (s == "t" || s == "p", s == "p"),
            _ => (false, false),
        };
        Ok(ExtTable {
            uris: text_array(get("urilocation")),
            execlocation: text_array(get("execlocation")),
            fmttype,
            fmtopts: text(get("fmtopts")).unwrap_or_default(),
            command: text(get("command")).filter(|c| !c.is_empty()),
            options: text_array(get("options")),
            rejectlimit: get("rejectlimit").and_then(Value::as_i64).unwrap_or(0),
            rejectlimittype: text(get("rejectlimittype")).unwrap_or_default(),
            log_errors,
            log_persistently: persistent || log_char_persistent,
            encoding: encoding.to_string(),
            writable: get("writable").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// WEB: rows from a command or from http(s) URIs.
    fn is_web(&self) -> bool {
        match self.uris.first() {
            None => true,
            Some(u) => u.starts_with("http"),
        }
    }
}

/// The tokens of `fmtopts` (`delimiter '|' null '' escape '\'`), each
/// string value as an escape string (`E'\\'`), in the manner of pg_dump's
/// dumputils and gpbackup's `tokenizeAndEscapeFormatOpts`: an apostrophe
/// inside a value is one not followed by a space or the end (a value
/// holding "' " cannot be told apart: the catalog keeps it unescaped).
fn format_tokens(opts: &str) -> Vec<String> {
    let chars: Vec<char> = opts.trim().chars().collect();
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_string = false;
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '\'' if in_string => {
                if i + 1 == chars.len() || chars[i + 1] == ' ' {
                    in_string = false;
                } else {
                    cur.push('\\');
                }
            }
            '\'' => {
                cur = String::from("E");
                in_string = true;
            }
            '\\' => cur.push('\\'),
            ' ' if !in_string => {
                out.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    out.push(cur);
    out.retain(|t| !t.is_empty());
    out
}

/// `FORMAT 'CSV' (delimiter E',' ...)`; for the custom, avro and parquet
/// formats the options as `key = value` pairs (the form they need).
pub(crate) fn format_clause(ext: &ExtTable) -> String {
    let name = match ext.fmttype.as_str() {
        "t" => "TEXT",
        "c" => "CSV",
        "b" => "CUSTOM",
        "a" => "AVRO",
        "p" => "PARQUET",
        other => other,
    };
    let mut s = format!("FORMAT '{name}'");
    let tokens = format_tokens(&ext.fmtopts);
    if !tokens.is_empty() {
        let opts = if matches!(name, "TEXT" | "CSV") {
            tokens.join(" ")
        } else {
            tokens
                .chunks(2)
                .map(|p| p.join(" = "))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(" ({opts})"));
    }
    s
}

/// ` ON ...` of an `EXECUTE` clause.
fn execute_on(loc: Option<&str>) -> String {
    let Some(loc) = loc else {
        return String::new();
    };
    let (what, arg) = loc.split_once(':').unwrap_or((loc, ""));
    match what {
        "HOST" => format!(" ON HOST {}", quote_literal(arg)),
        "PER_HOST" => " ON HOST".into(),
        "MASTER_ONLY" => " ON MASTER".into(),
        "COORDINATOR_ONLY" => " ON COORDINATOR".into(),
        "SEGMENT_ID" => format!(" ON SEGMENT {arg}"),
        "TOTAL_SEGS" => format!(" ON {arg}"),
        _ => String::new(), // ALL_SEGMENTS, the default
    }
}

/// The CREATE statement of external table `qn` with column lines `lines`
/// and, for a writable one, its distribution clause.
pub(crate) fn create_sql(
    qn: &str,
    lines: &[String],
    ext: &ExtTable,
    distributed: Option<&str>,
) -> String {
    let web = ext.is_web();
    let mut sql = format!(
        "CREATE {} EXTERNAL {}TABLE {qn} (\n{}\n)",
        if ext.writable { "WRITABLE" } else { "READABLE" },
        if web { "WEB " } else { "" },
        lines.join(",\n")
    );
    if let Some(cmd) = &ext.command {
        sql.push_str(&format!(
            "\nEXECUTE {}{}",
            quote_literal(cmd),
            execute_on(ext.execlocation.first().map(String::as_str))
        ));
    } else if !ext.uris.is_empty() {
        let uris: Vec<String> = ext.uris.iter().map(|u| quote_literal(u)).collect();
        sql.push_str(&format!("\nLOCATION (\n    {}\n)", uris.join(",\n    ")));
        match ext.execlocation.first().map(String::as_str) {
            Some("COORDINATOR_ONLY") => sql.push_str(" ON COORDINATOR"),
            Some("MASTER_ONLY") => sql.push_str(" ON MASTER"),
            _ => {}
        }
    }
    sql.push('\n');
    sql.push_str(&format_clause(ext));
    if !ext.options.is_empty() {
        sql.push_str(&format!(
            "\nOPTIONS ({})",
            generic_options_sql(&ext.options)
        ));
    }
    sql.push_str(&format!("\nENCODING {}", quote_literal(&ext.encoding)));
    if !ext.writable {
        if ext.log_errors {
            sql.push_str(if ext.log_persistently {
                "\nLOG ERRORS PERSISTENTLY"
            } else {
                "\nLOG ERRORS"
            });
        }
        if ext.rejectlimit > 0 {
            sql.push_str(&format!(
                "\nSEGMENT REJECT LIMIT {} {}",
                ext.rejectlimit,
                if ext.rejectlimittype == "p" {
                    "PERCENT"
                } else {
                    "ROWS"
                }
            ));
        }
    } else if let Some(d) = distributed {
        sql.push_str(&format!("\n{d}"));
    }
    sql.push(';');
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines() -> Vec<String> {
        vec!["    a integer".into(), "    b text".into()]
    }

    #[test]
    fn format_options_are_escaped() {
        assert_eq!(
            format_tokens(r"delimiter '|' null '' escape '\'"),
            vec!["delimiter", "E'|'", "null", "E''", "escape", r"E'\\'"]
        );
        assert_eq!(
            format_tokens("delimiter ',' null '' escape '\"' quote '''"),
            vec![
                "delimiter",
                "E','",
                "null",
                "E''",
                "escape",
                "E'\"'",
                "quote",
                r"E'\''"
            ]
        );
        assert!(format_tokens("").is_empty());
        let custom = ExtTable {
            fmttype: "b".into(),
            fmtopts: "formatter 'fixedwidth_in' i '5'".into(),
            ..Default::default()
        };
        assert_eq!(
            format_clause(&custom),
            "FORMAT 'CUSTOM' (formatter = E'fixedwidth_in', i = E'5')"
        );
    }

    #[test]
    fn readable_with_location_and_errors() {
        let json: Value = serde_json::from_str(
            r#"{"reloid":16400,"urilocation":["gpfdist://etl1:8081/*.txt","gpfdist://etl2:8081/*.txt"],
                "execlocation":["ALL_SEGMENTS"],"fmttype":"t","fmtopts":"delimiter '|' null '\\N' escape '\\'",
                "command":null,"rejectlimit":10,"rejectlimittype":"r","logerrors":"t","encoding":6,"writable":false}"#,
        )
        .unwrap();
        let ext = ExtTable::from_row(&json, "UTF8", false).unwrap();
        assert_eq!(
            create_sql("s.ext", &lines(), &ext, Some("DISTRIBUTED RANDOMLY")),
            "CREATE READABLE EXTERNAL TABLE s.ext (\n    a integer,\n    b text\n)\n\
             LOCATION (\n    'gpfdist://etl1:8081/*.txt',\n    'gpfdist://etl2:8081/*.txt'\n)\n\
             FORMAT 'TEXT' (delimiter E'|' null E'\\\\N' escape E'\\\\')\n\
             ENCODING 'UTF8'\nLOG ERRORS\nSEGMENT REJECT LIMIT 10 ROWS;"
        );
        // Persistently: a char 'p' (Cloudberry) or the foreign table's option.
        let mut j = json.clone();
        j["logerrors"] = Value::Bool(true);
        let ext = ExtTable::from_row(&j, "UTF8", true).unwrap();
        assert!(create_sql("s.ext", &lines(), &ext, None).contains("\nLOG ERRORS PERSISTENTLY\n"));
        j["logerrors"] = Value::String("p".into());
        let ext = ExtTable::from_row(&j, "UTF8", false).unwrap();
        assert!(ext.log_persistently);
        j["logerrors"] = Value::String("f".into());
        j["rejectlimittype"] = Value::String("p".into());
        let ext = ExtTable::from_row(&j, "UTF8", false).unwrap();
        let sql = create_sql("s.ext", &lines(), &ext, None);
        assert!(!sql.contains("LOG ERRORS"));
        assert!(sql.ends_with("\nSEGMENT REJECT LIMIT 10 PERCENT;"));
    }

    #[test]
    fn web_tables_execute_commands() {
        let ext = ExtTable {
            command: Some("echo 'hi'".into()),
            execlocation: vec!["HOST:sdw1".into()],
            fmttype: "c".into(),
            encoding: "LATIN1".into(),
            ..Default::default()
        };
        assert_eq!(
            create_sql("s.w", &lines(), &ext, None),
            "CREATE READABLE EXTERNAL WEB TABLE s.w (\n    a integer,\n    b text\n)\n\
             EXECUTE 'echo ''hi''' ON HOST 'sdw1'\nFORMAT 'CSV'\nENCODING 'LATIN1';"
        );
        for (loc, on) in [
            ("ALL_SEGMENTS", ""),
            ("PER_HOST", " ON HOST"),
            ("COORDINATOR_ONLY", " ON COORDINATOR"),
            ("MASTER_ONLY", " ON MASTER"),
            ("SEGMENT_ID:3", " ON SEGMENT 3"),
            ("TOTAL_SEGS:4", " ON 4"),
        ] {
            assert_eq!(execute_on(Some(loc)), on);
        }
        let http = ExtTable {
            uris: vec!["http://intranet/x.csv".into()],
            execlocation: vec!["ALL_SEGMENTS".into()],
            fmttype: "c".into(),
            encoding: "UTF8".into(),
            ..Default::default()
        };
        assert!(create_sql("s.h", &lines(), &http, None)
            .starts_with("CREATE READABLE EXTERNAL WEB TABLE s.h"));
    }

    #[test]
    fn writable_tables_are_distributed_and_log_nothing() {
        let ext = ExtTable {
            uris: vec!["gpfdist://etl1:8081/out.txt".into()],
            execlocation: vec!["ALL_SEGMENTS".into()],
            fmttype: "t".into(),
            fmtopts: "delimiter ','".into(),
            options: vec!["k=v".into()],
            writable: true,
            log_errors: true,
            rejectlimit: 5,
            encoding: "UTF8".into(),
            ..Default::default()
        };
        assert_eq!(
            create_sql("s.out", &lines(), &ext, Some("DISTRIBUTED BY (a)")),
            "CREATE WRITABLE EXTERNAL TABLE s.out (\n    a integer,\n    b text\n)\n\
             LOCATION (\n    'gpfdist://etl1:8081/out.txt'\n)\n\
             FORMAT 'TEXT' (delimiter E',')\nOPTIONS (k 'v')\nENCODING 'UTF8'\nDISTRIBUTED BY (a);"
        );
    }

    #[test]
    fn a_row_without_a_format_is_an_error() {
        let err = ExtTable::from_row(&serde_json::json!({"reloid": 1}), "UTF8", false).unwrap_err();
        assert!(err.to_string().contains("fmttype"), "{err}");
    }
}

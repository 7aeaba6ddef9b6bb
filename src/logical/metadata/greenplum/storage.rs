//! Append-optimized storage: the table's options (`WITH (...)`) and each
//! column's `ENCODING (...)`.
//!
//! From Cloudberry's `src/include/catalog/pg_appendonly.h`: one row per
//! append-optimized table, `relid`, `blocksize`, `compresslevel`,
//! `checksum`, `compresstype`, `columnstore` (the rest are auxiliary
//! relations and versions, rebuilt by the restore). On Greenplum 7 and
//! Cloudberry the table's access method is `ao_row` or `ao_column`
//! (`USING ...`, written from `pg_am` like any access method) and
//! `reloptions` keep only the options given explicitly (gpbackup's
//! integration test "creates a basic append-optimized column-oriented
//! table": appendonly and orientation are no longer stored); on Greenplum
//! 6 they are reloptions `appendonly=true, orientation=column`. The
//! effective values of `pg_appendonly` are added for each option the
//! reloptions leave out, so the restored table does not take the target's
//! `gp_default_storage_options` instead.
//!
//! Per-column encodings are `pg_attribute_encoding` (`attrelid`, `attnum`,
//! `attoptions`), written as gpbackup's `printColumnDefinitions` does:
//! `ENCODING (compresstype=zlib,...)` after the column's constraints, for
//! column-oriented tables only.
//!
//! **Untested: no Greenplum/Cloudberry build here.**

use serde::Deserialize;

use super::super::{quote_ident, quote_literal};

/// How a server spells append-optimized storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AoSyntax {
    /// Greenplum 7, Cloudberry: `USING ao_row|ao_column WITH (...)`.
    AccessMethod,
    /// Greenplum 6: `WITH (appendonly=true, orientation=column, ...)`.
    Reloptions,
}

/// A row of `pg_appendonly` (as `to_json` gives it: columns a release
/// lacks are absent).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub(crate) struct AoRow {
    #[serde(default)]
    pub blocksize: Option<i64>,
    #[serde(default)]
    pub compresslevel: Option<i64>,
    #[serde(default)]
    pub checksum: Option<bool>,
    #[serde(default)]
    pub compresstype: Option<String>,
    #[serde(default)]
    pub columnstore: bool,
}

/// SQL: `relid` and `ao` (JSON of [`AoRow`]) for the user tables.
pub(crate) const APPENDONLY_SQL: &str = "SELECT ao.relid, pg_catalog.to_json(ao) AS ao \
     FROM pg_catalog.pg_appendonly ao WHERE ao.relid >= 16384";

/// SQL: per-column encodings, `attrelid`, `attnum`, `options` (JSON array
/// of `k=v`).
pub(crate) const ENCODINGS_SQL: &str = "SELECT e.attrelid, e.attnum, \
     pg_catalog.array_to_json(e.attoptions) AS options \
     FROM pg_catalog.pg_attribute_encoding e \
     WHERE e.attrelid >= 16384 AND e.attnum > 0 AND e.attoptions IS NOT NULL";

fn key_of(option: &str) -> String {
    option
        .split_once('=')
        .map_or(option, |(k, _)| k)
        .to_ascii_lowercase()
}

/// The table's storage options (`k=v`, for `WITH (...)`): its reloptions,
/// then for an append-optimized table (`ao`) what they leave out.
pub(crate) fn storage_options(
    reloptions: &[String],
    ao: Option<&AoRow>,
    syntax: AoSyntax,
) -> Vec<String> {
    let Some(ao) = ao else {
        return reloptions.to_vec();
    };
    let spelled_by_am = |k: &str| matches!(k, "appendonly" | "appendoptimized" | "orientation");
    let mut out = Vec::new();
    if syntax == AoSyntax::Reloptions {
        if !reloptions
            .iter()
            .any(|o| matches!(key_of(o).as_str(), "appendonly" | "appendoptimized"))
        {
            out.push("appendonly=true".to_string());
        }
        if !reloptions.iter().any(|o| key_of(o) == "orientation") {
            let o = if ao.columnstore { "column" } else { "row" };
            out.push(format!("orientation={o}"));
        }
        out.extend(reloptions.iter().cloned());
    } else {
        // The access method says it; written twice it is refused.
        out.extend(
            reloptions
                .iter()
                .filter(|o| !spelled_by_am(&key_of(o)))
                .cloned(),
        );
    }
    let has = |out: &[String], k: &str| out.iter().any(|o| key_of(o) == k);
    let mut add = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            if !has(&out, k) {
                out.push(format!("{k}={v}"));
            }
        }
    };
    add(
        "compresstype",
        ao.compresstype.as_ref().map(|t| {
            if t.is_empty() {
                "none".to_string()
            } else {
                t.to_ascii_lowercase()
            }
        }),
    );
    add("compresslevel", ao.compresslevel.map(|l| l.to_string()));
    add("blocksize", ao.blocksize.map(|b| b.to_string()));
    add("checksum", ao.checksum.map(|c| c.to_string()));
    out
}

/// A value as gpbackup writes it in `ENCODING (...)`: bare when it is a
/// plain word or number, else a quoted literal.
fn option_value(v: &str) -> String {
    if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        v.to_string()
    } else {
        quote_literal(v)
    }
}

/// ` ENCODING (compresstype=zstd, compresslevel=3)` for a column's
/// `attoptions`, or "" when there are none.
pub(crate) fn encoding_clause(options: &[String]) -> String {
    if options.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = options
        .iter()
        .map(|o| match o.split_once('=') {
            Some((k, v)) => format!("{}={}", quote_ident(k), option_value(v)),
            None => quote_ident(o),
        })
        .collect();
    format!(" ENCODING ({})", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ao(columnstore: bool, compresstype: &str, level: i64) -> AoRow {
        AoRow {
            blocksize: Some(32768),
            compresslevel: Some(level),
            checksum: Some(true),
            compresstype: Some(compresstype.into()),
            columnstore,
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn heap_tables_keep_their_reloptions() {
        let r = strings(&["fillfactor=70"]);
        assert_eq!(storage_options(&r, None, AoSyntax::AccessMethod), r);
    }

    #[test]
    fn access_method_servers_get_the_effective_options() {
        // Cloudberry keeps the explicit ones in reloptions.
        let r = strings(&["compresstype=zstd", "compresslevel=5"]);
        assert_eq!(
            storage_options(&r, Some(&ao(true, "zstd", 5)), AoSyntax::AccessMethod),
            strings(&[
                "compresstype=zstd",
                "compresslevel=5",
                "blocksize=32768",
                "checksum=true"
            ])
        );
        // None given: all of them, "" compresstype as none; appendonly and
        // orientation are the access method's to say.
        let r = strings(&["appendonly=true", "orientation=row"]);
        assert_eq!(
            storage_options(&r, Some(&ao(false, "", 0)), AoSyntax::AccessMethod),
            strings(&[
                "compresstype=none",
                "compresslevel=0",
                "blocksize=32768",
                "checksum=true"
            ])
        );
    }

    #[test]
    fn greenplum_6_spells_storage_in_reloptions() {
        assert_eq!(
            storage_options(&[], Some(&ao(true, "ZLIB", 1)), AoSyntax::Reloptions),
            strings(&[
                "appendonly=true",
                "orientation=column",
                "compresstype=zlib",
                "compresslevel=1",
                "blocksize=32768",
                "checksum=true"
            ])
        );
        let r = strings(&["appendonly=true", "blocksize=65536"]);
        assert_eq!(
            storage_options(&r, Some(&ao(false, "", 0)), AoSyntax::Reloptions),
            strings(&[
                "orientation=row",
                "appendonly=true",
                "blocksize=65536",
                "compresstype=none",
                "compresslevel=0",
                "checksum=true"
            ])
        );
    }

    #[test]
    fn a_row_from_json_lacks_what_the_release_lacks() {
        let r: AoRow = serde_json::from_str(
            r#"{"relid":16500,"blocksize":32768,"compresslevel":3,"checksum":false,
                "compresstype":"zstd","columnstore":true,"segrelid":16503,"version":2}"#,
        )
        .unwrap();
        assert_eq!(r, {
            let mut x = ao(true, "zstd", 3);
            x.checksum = Some(false);
            x
        });
        let r: AoRow = serde_json::from_str(r#"{"relid":1,"columnstore":false}"#).unwrap();
        assert_eq!(
            storage_options(&[], Some(&r), AoSyntax::AccessMethod),
            Vec::<String>::new()
        );
    }

    #[test]
    fn column_encodings() {
        assert_eq!(
            encoding_clause(&strings(&[
                "compresstype=zlib",
                "compresslevel=1",
                "blocksize=32768"
            ])),
            " ENCODING (compresstype=zlib, compresslevel=1, blocksize=32768)"
        );
        assert_eq!(
            encoding_clause(&strings(&["compresstype=it's"])),
            " ENCODING (compresstype='it''s')"
        );
        assert_eq!(encoding_clause(&[]), "");
    }
}

//! The format a table's rows are stored in: COPY's text format, or its
//! binary format for tables whose every column has a built-in type with a
//! binary form that has not changed across PostgreSQL versions.
//!
//! Binary rows cost the server far less to load: no line and field
//! parsing, and no `numeric_in`/`float8in`/`int4in` per value (measured on
//! PostgreSQL 15: a table of bigint, text, numeric, float8 and int loads
//! about 2× faster, pgbench's accounts about 1.3×). The types are taken by
//! OID: built-in OIDs are the same on every server, and the binary forms
//! of these types are the wire protocol's, which every driver relies on.
//! A restore into a table whose column types differ from the backup's
//! goes through a temporary table with the backup's types and converts
//! each value through its text form, as a text COPY would.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// How a table's rows are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CopyFormat {
    /// COPY's text format (every backup before the binary format existed).
    #[default]
    Text,
    /// COPY's binary format.
    Binary,
}

impl CopyFormat {
    /// The COPY option list entry, if any (`FORMAT binary`).
    pub fn option(self) -> Option<&'static str> {
        match self {
            CopyFormat::Text => None,
            CopyFormat::Binary => Some("FORMAT binary"),
        }
    }

    pub fn is_binary(self) -> bool {
        self == CopyFormat::Binary
    }
}

pub use crate::config::CopyFormatChoice;

/// Built-in types (by OID) whose binary send/receive form is stable
/// across PostgreSQL versions, and their array types. Left out on
/// purpose: `money` (its meaning depends on lc_monetary), types without
/// a binary form (aclitem...), and every user-defined type (enums,
/// composites, domains, extension types: their OIDs differ between
/// databases, and arrays and records carry element OIDs).
const PORTABLE: &[u32] = &[
    16,   // bool
    17,   // bytea
    18,   // "char"
    19,   // name
    20,   // int8
    21,   // int2
    23,   // int4
    25,   // text
    26,   // oid
    114,  // json
    650,  // cidr
    700,  // float4
    701,  // float8
    829,  // macaddr
    869,  // inet
    1042, // bpchar
    1043, // varchar
    1082, // date
    1083, // time
    1114, // timestamp
    1184, // timestamptz
    1186, // interval
    1266, // timetz
    1560, // bit
    1562, // varbit
    1700, // numeric
    2950, // uuid
    3220, // pg_lsn
    3802, // jsonb
    // Their arrays.
    1000, 1001, 1002, 1003, 1016, 1005, 1007, 1009, 1028, 199, 651, 1021, 1022, 1040, 1041, 1014,
    1015, 1182, 1183, 1115, 1185, 1187, 1270, 1561, 1563, 1231, 2951, 3221, 3807,
];

/// Whether a column of this type may be stored in binary.
pub fn portable(type_oid: u32) -> bool {
    PORTABLE.contains(&type_oid)
}

/// The format for a table with these column types.
pub fn choose(choice: CopyFormatChoice, types: &[u32]) -> CopyFormat {
    if choice == CopyFormatChoice::Auto && !types.is_empty() && types.iter().all(|&t| portable(t)) {
        CopyFormat::Binary
    } else {
        CopyFormat::Text
    }
}

/// The 11-byte signature that starts a binary COPY stream.
pub const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

/// The trailer that ends one: a field count of -1.
pub const TRAILER: [u8; 2] = [0xff, 0xff];

/// Why a binary COPY stream cannot be cut into rows.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed(pub String);

/// Cuts a binary COPY stream into pieces of whole rows, for loading one
/// table through several connections: the header is taken off (each
/// connection's COPY starts with [`BinaryCutter::header`]) and so is the
/// trailer (each ends with [`TRAILER`]).
#[derive(Debug, Default)]
pub struct BinaryCutter {
    header: Option<Bytes>,
    /// Bytes of `buf` known to be whole rows.
    scanned: usize,
    ended: bool,
}

impl BinaryCutter {
    pub fn new() -> BinaryCutter {
        BinaryCutter::default()
    }

    /// The stream's header, once it has been read.
    pub fn header(&self) -> Option<&Bytes> {
        self.header.as_ref()
    }

    /// Takes the header off `buf` when it is whole: `Ok(false)` until then.
    fn take_header(&mut self, buf: &mut BytesMut) -> Result<bool, Malformed> {
        if self.header.is_some() {
            return Ok(true);
        }
        if buf.len() < SIGNATURE.len() + 8 {
            return Ok(false);
        }
        if &buf[..SIGNATURE.len()] != SIGNATURE {
            return Err(Malformed(
                "it does not start with PGCOPY's signature".into(),
            ));
        }
        let ext = u32::from_be_bytes(buf[15..19].try_into().expect("4 bytes")) as usize;
        let len = 19 + ext;
        if buf.len() < len {
            return Ok(false);
        }
        self.header = Some(buf.split_to(len).freeze());
        Ok(true)
    }

    /// The next piece of at least `min` bytes of whole rows from `buf`
    /// (any remainder at the end of the stream, `at_end`), or `None` when
    /// more bytes are needed. An incomplete row at the end is an error.
    pub fn cut(
        &mut self,
        buf: &mut BytesMut,
        min: usize,
        at_end: bool,
    ) -> Result<Option<Bytes>, Malformed> {
        if !self.take_header(buf)? {
            return if at_end {
                Err(Malformed("it ends inside its header".into()))
            } else {
                Ok(None)
            };
        }
        while !self.ended && self.scanned < min.max(1) {
            match row_len(&buf[self.scanned..])? {
                Some(None) => {
                    // The trailer: the stream ends there (each connection
                    // sends its own).
                    self.ended = true;
                    buf.truncate(self.scanned);
                }
                Some(Some(n)) => self.scanned += n,
                None if at_end => {
                    if self.scanned == buf.len() {
                        break;
                    }
                    return Err(Malformed("it ends inside a row".into()));
                }
                None => return Ok(None),
            }
        }
        if self.scanned == 0 {
            return Ok(None);
        }
        if self.scanned < min && !(at_end || self.ended) {
            return Ok(None);
        }
        let piece = buf.split_to(self.scanned).freeze();
        self.scanned = 0;
        Ok(Some(piece))
    }
}

/// The length of the row at the start of `b`: `Some(Some(n))`, the
/// trailer `Some(None)`, or `None` when `b` does not hold all of it.
fn row_len(b: &[u8]) -> Result<Option<Option<usize>>, Malformed> {
    let mut r = b;
    if r.remaining() < 2 {
        return Ok(None);
    }
    let fields = r.get_i16();
    if fields == -1 {
        return Ok(Some(None));
    }
    if fields < 0 {
        return Err(Malformed(format!("a row has {fields} fields")));
    }
    for _ in 0..fields {
        if r.remaining() < 4 {
            return Ok(None);
        }
        let len = r.get_i32();
        if len < -1 {
            return Err(Malformed(format!("a field is {len} bytes long")));
        }
        if len > 0 {
            let len = len as usize;
            if r.remaining() < len {
                return Ok(None);
            }
            r.advance(len);
        }
    }
    Ok(Some(Some(b.len() - r.remaining())))
}

/// Binary rows for a table whose column types differ from the backup's:
/// they are copied into a temporary table of the backup's types, then
/// each value is converted through its text form into the target's type
/// (what a text COPY would do), so a value is never read as another type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversion {
    /// Per column of the backup: its type there, and the target's.
    pub source_types: Vec<String>,
    pub target_types: Vec<String>,
}

/// The temporary table binary rows go through.
pub const STAGING: &str = "pg_temp.cbdr_binary_rows";

impl Conversion {
    /// The statements of a converted load, in its transaction: create the
    /// staging table, COPY into it (binary), insert into `target`.
    pub fn statements(&self, target: &str, columns: &[String]) -> [String; 3] {
        let defs = columns
            .iter()
            .zip(&self.source_types)
            .map(|(c, t)| format!("{c} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        let create = format!("CREATE TEMPORARY TABLE {STAGING} ({defs}) ON COMMIT DROP");
        let copy = format!(
            "COPY {STAGING} ({}) FROM STDIN WITH (FORMAT binary)",
            columns.join(", ")
        );
        // format('%s', v) is v's output function; NULL stays NULL.
        let values = columns
            .iter()
            .zip(&self.target_types)
            .map(|(c, t)| {
                format!("CAST(CASE WHEN {c} IS NULL THEN NULL ELSE format('%s', {c}) END AS {t})")
            })
            .collect::<Vec<_>>()
            .join(", ");
        let insert = format!(
            "INSERT INTO {target} ({}) SELECT {values} FROM {STAGING}",
            columns.join(", ")
        );
        [create, copy, insert]
    }
}

/// Whether binary rows of these (column, type OID) pairs can be copied
/// straight into a table with `target`'s columns and types: every column
/// there, with the same type. (A missing table or column is left to
/// COPY, whose error names it.)
pub fn straight(backup: &[(String, u32)], target: &[(String, u32)]) -> bool {
    backup.iter().all(|(c, t)| {
        target
            .iter()
            .find(|(tc, _)| tc == c)
            .is_none_or(|(_, tt)| tt == t)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&0u32.to_be_bytes());
        h.extend_from_slice(&0u32.to_be_bytes());
        h
    }

    fn row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut r = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(v) => {
                    r.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    r.extend_from_slice(v);
                }
                None => r.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        r
    }

    #[test]
    fn a_changed_column_type_needs_the_conversion() {
        let b = vec![("a".to_string(), 23), ("\"B c\"".to_string(), 25)];
        assert!(straight(&b, &b));
        assert!(straight(&b, &[("a".into(), 23)]));
        assert!(!straight(&b, &[("a".into(), 20), ("\"B c\"".into(), 25)]));
        let conv = Conversion {
            source_types: vec!["integer".into(), "text".into()],
            target_types: vec!["bigint".into(), "character varying".into()],
        };
        let cols = vec!["a".to_string(), "\"B c\"".to_string()];
        let [create, copy, insert] = conv.statements("s.t", &cols);
        assert_eq!(
            create,
            "CREATE TEMPORARY TABLE pg_temp.cbdr_binary_rows (a integer, \"B c\" text) ON COMMIT DROP"
        );
        assert_eq!(
            copy,
            "COPY pg_temp.cbdr_binary_rows (a, \"B c\") FROM STDIN WITH (FORMAT binary)"
        );
        assert!(insert.starts_with("INSERT INTO s.t (a, \"B c\") SELECT CAST(CASE WHEN a IS NULL"));
        assert!(insert.contains("AS character varying) FROM pg_temp.cbdr_binary_rows"));
    }

    #[test]
    fn only_built_in_stable_types_are_binary() {
        use CopyFormatChoice::*;
        assert_eq!(choose(Auto, &[23, 25, 1700, 701, 1042]), CopyFormat::Binary);
        assert_eq!(choose(Auto, &[1007, 3802]), CopyFormat::Binary);
        // An enum, a domain or a composite (OIDs of the database's own).
        assert_eq!(choose(Auto, &[23, 16_390]), CopyFormat::Text);
        // money, aclitem.
        assert_eq!(choose(Auto, &[790]), CopyFormat::Text);
        assert_eq!(choose(Auto, &[1033]), CopyFormat::Text);
        assert_eq!(choose(Auto, &[]), CopyFormat::Text);
        assert_eq!(choose(Text, &[23]), CopyFormat::Text);
    }

    #[test]
    fn the_cutter_keeps_rows_whole_and_drops_header_and_trailer() {
        let rows: Vec<Vec<u8>> = (0..50u32)
            .map(|i| {
                let text = vec![b'x'; (i * 7 % 23) as usize];
                if i % 5 == 0 {
                    row(&[Some(&i.to_be_bytes()), None])
                } else {
                    row(&[Some(&i.to_be_bytes()), Some(&text)])
                }
            })
            .collect();
        let mut stream = header();
        for r in &rows {
            stream.extend_from_slice(r);
        }
        stream.extend_from_slice(&TRAILER);
        let body: Vec<u8> = rows.concat();
        // Fed in slices of every size from 1 byte up.
        for step in [1, 2, 3, 7, 19, 64, 1000] {
            let mut c = BinaryCutter::new();
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(step) {
                buf.extend_from_slice(chunk);
                while let Some(p) = c.cut(&mut buf, 40, false).unwrap() {
                    out.push(p);
                }
            }
            while let Some(p) = c.cut(&mut buf, 40, true).unwrap() {
                out.push(p);
            }
            assert_eq!(c.header().unwrap().as_ref(), header().as_slice());
            assert!(out.len() > 1, "step {step}");
            // Every piece is whole rows.
            for p in &out {
                let mut rest: &[u8] = p;
                while !rest.is_empty() {
                    let n = row_len(rest).unwrap().unwrap().unwrap();
                    rest = &rest[n..];
                }
            }
            assert_eq!(out.concat(), body, "step {step}");
        }
    }

    #[test]
    fn a_stream_without_its_trailer_still_ends_at_a_row() {
        let mut stream = header();
        stream.extend_from_slice(&row(&[Some(b"abc")]));
        let mut c = BinaryCutter::new();
        let mut buf = BytesMut::from(&stream[..]);
        let p = c.cut(&mut buf, 1 << 20, true).unwrap().unwrap();
        assert_eq!(p.as_ref(), row(&[Some(b"abc")]).as_slice());
        assert_eq!(c.cut(&mut buf, 1 << 20, true).unwrap(), None);
    }

    #[test]
    fn damaged_streams_are_refused() {
        let mut c = BinaryCutter::new();
        let mut buf = BytesMut::from(&b"not a copy stream at all"[..]);
        assert!(c.cut(&mut buf, 1, false).is_err());

        let mut stream = header();
        let r = row(&[Some(b"abcdef")]);
        stream.extend_from_slice(&r[..r.len() - 2]);
        let mut c = BinaryCutter::new();
        let mut buf = BytesMut::from(&stream[..]);
        assert_eq!(c.cut(&mut buf, 1, false).unwrap(), None);
        assert!(c.cut(&mut buf, 1, true).is_err());

        let mut stream = header();
        stream.extend_from_slice(&(-3i16).to_be_bytes());
        let mut c = BinaryCutter::new();
        let mut buf = BytesMut::from(&stream[..]);
        assert!(c.cut(&mut buf, 1, true).is_err());
    }
}

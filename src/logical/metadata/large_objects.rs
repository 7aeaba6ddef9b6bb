//! Large objects as pg_dump writes them: a `BLOB` entry per object that
//! creates it empty (`lo_create` with its OID), then its owner, comment
//! and grants. Their contents are data (`logical::large_objects`).
//!
//! Large objects belong to no schema: a restore takes them unless it is
//! filtered to schemas or tables (as pg_restore's `-n`/`-t` leave them
//! out), and so does a backup.

use super::acl::{add_owner_and_acl, AclRow};
use super::comments::add_comment;
use super::{acl_json, query, Graph, Node, RowExt, Target};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// The kind of the entry that creates a large object (pg_dump's word).
pub const BLOB: &str = "BLOB";

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT m.oid, pg_catalog.pg_get_userbyid(m.lomowner) AS owner, {acl} AS acl, \
                pg_catalog.obj_description(m.oid, 'pg_largeobject') AS comment \
         FROM pg_catalog.pg_largeobject_metadata m ORDER BY m.oid",
        acl = acl_json("m.lomacl"),
    );
    for r in query(conn, "large objects", &sql).await? {
        let oid = r.oid("oid")?.to_string();
        let node = g.add(
            Node::new(Section::PreData, BLOB, "", &oid)
                .statement(format!("SELECT pg_catalog.lo_create('{oid}');")),
        );
        let t = Target::of(
            node,
            Section::PreData,
            "LARGE OBJECT",
            "LARGE OBJECT",
            &oid,
            "",
            &oid,
        );
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_owner_and_acl(g, &t, &r.text("owner")?, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

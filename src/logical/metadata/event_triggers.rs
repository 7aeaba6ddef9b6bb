//! Event triggers: created after every other object (they would fire on
//! the restore's own statements), with their enabled state.

use super::acl::add_owner;
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    class, not_extension_member, query, quote_ident, quote_literal, Graph, Node, ObjRef, RowExt,
    Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT e.oid, e.evtname, e.evtevent, e.evtfoid, e.evtfoid::pg_catalog.regproc::text AS func, \
                e.evtenabled::text AS enabled, pg_catalog.array_to_json(e.evttags) AS tags, \
                pg_catalog.pg_get_userbyid(e.evtowner) AS owner, \
                pg_catalog.obj_description(e.oid, 'pg_event_trigger') AS comment \
         FROM pg_catalog.pg_event_trigger e WHERE {ext} ORDER BY e.evtname",
        ext = not_extension_member("pg_event_trigger", "e.oid"),
    );
    for r in query(conn, "event triggers", &sql).await? {
        let name = r.text("evtname")?;
        let q = quote_ident(&name);
        let mut sql = format!("CREATE EVENT TRIGGER {q} ON {}", r.text("evtevent")?);
        let tags: Vec<String> = r.opt_json("tags")?.unwrap_or_default();
        if !tags.is_empty() {
            let tags: Vec<String> = tags.iter().map(|t| quote_literal(t)).collect();
            sql.push_str(&format!("\n    WHEN TAG IN ({})", tags.join(", ")));
        }
        sql.push_str(&format!("\n    EXECUTE FUNCTION {}();", r.text("func")?));
        match r.text("enabled")?.as_str() {
            "D" => sql.push_str(&format!("\nALTER EVENT TRIGGER {q} DISABLE;")),
            "A" => sql.push_str(&format!("\nALTER EVENT TRIGGER {q} ENABLE ALWAYS;")),
            "R" => sql.push_str(&format!("\nALTER EVENT TRIGGER {q} ENABLE REPLICA;")),
            _ => {}
        }
        let node = g.add(
            Node::new(Section::PostData, "EVENT TRIGGER", "", &name)
                .statement(sql)
                .dep(Dep::Obj(ObjRef::new(class::PG_PROC, r.oid("evtfoid")?))),
        );
        g.bind(ObjRef::new(class::PG_EVENT_TRIGGER, r.oid("oid")?), node);
        g.mark_last(node);
        let t = Target::of(node, Section::PostData, "EVENT TRIGGER", "", &q, "", &name);
        let owner = add_owner(g, &t, &r.text("owner")?);
        g.mark_last(owner);
        if let Some(c) = add_comment(g, &t, r.opt("comment")?.as_deref()) {
            g.mark_last(c);
        }
    }
    Ok(())
}

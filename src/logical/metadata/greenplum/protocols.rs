//! External table protocols: `CREATE [TRUSTED] PROTOCOL p (readfunc = ...,
//! writefunc = ..., validatorfunc = ...)`, with their owner and grants.
//!
//! From Cloudberry's `src/include/catalog/pg_extprotocol.h` (`oid`,
//! `ptcname`, `ptcreadfn`, `ptcwritefn`, `ptcvalidatorfn`, `ptcowner`,
//! `ptctrusted`, `ptcacl`) and gpbackup's
//! `PrintCreateExternalProtocolStatement`. Protocols an extension creates
//! (gpcloud's `s3`, PXF) come with their extension and are left out.
//!
//! **Untested: no Greenplum/Cloudberry build here.**

use super::super::acl::{add_acl, add_owner, AclRow};
use super::super::deps::Dep;
use super::super::{
    acl_json, class, not_extension_member, query, quote_ident, Graph, Node, ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// `pg_extprotocol`'s catalog OID (as `pg_depend` names its rows).
pub(crate) const PG_EXTPROTOCOL: u32 = 7175;

/// A protocol's row, its functions quoted and schema-qualified.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Protocol {
    pub name: String,
    pub trusted: bool,
    pub readfunc: Option<String>,
    pub writefunc: Option<String>,
    pub validatorfunc: Option<String>,
}

/// The CREATE PROTOCOL statement.
pub(crate) fn protocol_sql(p: &Protocol) -> String {
    let funcs: Vec<String> = [
        ("readfunc", &p.readfunc),
        ("writefunc", &p.writefunc),
        ("validatorfunc", &p.validatorfunc),
    ]
    .into_iter()
    .filter_map(|(k, f)| f.as_ref().map(|f| format!("{k} = {f}")))
    .collect();
    format!(
        "CREATE {}PROTOCOL {} ({});",
        if p.trusted { "TRUSTED " } else { "" },
        quote_ident(&p.name),
        funcs.join(", ")
    )
}

/// SQL: the function of column `col` of `p`, quoted and qualified, as
/// `alias` (NULL for none).
fn func_sql(col: &str, alias: &str) -> String {
    format!(
        "(SELECT pg_catalog.format('%I.%I', fn.nspname, f.proname) FROM pg_catalog.pg_proc f \
           JOIN pg_catalog.pg_namespace fn ON fn.oid = f.pronamespace WHERE f.oid = p.{col}) AS {alias}"
    )
}

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT p.oid, p.ptcname, p.ptctrusted, p.ptcreadfn, p.ptcwritefn, p.ptcvalidatorfn, \
                {read}, {write}, {validator}, \
                pg_catalog.pg_get_userbyid(p.ptcowner) AS owner, {acl} AS acl \
         FROM pg_catalog.pg_extprotocol p WHERE p.oid >= 16384 AND {ext} ORDER BY p.ptcname",
        read = func_sql("ptcreadfn", "readfunc"),
        write = func_sql("ptcwritefn", "writefunc"),
        validator = func_sql("ptcvalidatorfn", "validatorfunc"),
        acl = acl_json("p.ptcacl"),
        ext = not_extension_member("pg_extprotocol", "p.oid"),
    );
    for r in query(conn, "external protocols", &sql).await? {
        let p = Protocol {
            name: r.text("ptcname")?,
            trusted: r.flag("ptctrusted")?,
            readfunc: r.opt("readfunc")?,
            writefunc: r.opt("writefunc")?,
            validatorfunc: r.opt("validatorfunc")?,
        };
        let mut node =
            Node::new(Section::PreData, "PROTOCOL", "", &p.name).statement(protocol_sql(&p));
        for col in ["ptcreadfn", "ptcwritefn", "ptcvalidatorfn"] {
            let f = r.oid(col)?;
            if f != 0 {
                node = node.dep(Dep::Obj(ObjRef::new(class::PG_PROC, f)));
            }
        }
        let node = g.add(node);
        g.bind(ObjRef::new(PG_EXTPROTOCOL, r.oid("oid")?), node);
        let t = Target::of(
            node,
            Section::PreData,
            "PROTOCOL",
            "PROTOCOL",
            &quote_ident(&p.name),
            "",
            &p.name,
        );
        let owner = r.text("owner")?;
        let owner_node = add_owner(g, &t, &owner);
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_acl(g, &t, &owner, Some(owner_node), acl.as_deref(), &[]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocols_name_the_functions_they_have() {
        let p = Protocol {
            name: "myprot".into(),
            trusted: true,
            readfunc: Some("public.read_from_myprot".into()),
            writefunc: Some("public.write_to_myprot".into()),
            validatorfunc: None,
        };
        assert_eq!(
            protocol_sql(&p),
            "CREATE TRUSTED PROTOCOL myprot (readfunc = public.read_from_myprot, \
             writefunc = public.write_to_myprot);"
        );
        let p = Protocol {
            name: "Read Only".into(),
            readfunc: Some("s.\"R\"".into()),
            validatorfunc: Some("s.v".into()),
            ..Default::default()
        };
        assert_eq!(
            protocol_sql(&p),
            "CREATE PROTOCOL \"Read Only\" (readfunc = s.\"R\", validatorfunc = s.v);"
        );
    }
}

//! Owners, grants and default privileges.
//!
//! An object's grants replay as: `REVOKE ALL ... FROM PUBLIC`, `REVOKE ALL
//! ... FROM <owner>` (which leaves an empty ACL), then one GRANT per ACL
//! item in the catalog's order, so the restored ACL is the same array. A
//! grant made by someone other than the owner runs under `SET ROLE
//! <grantor>` (PostgreSQL records the current role as grantor). Column
//! grants follow the table's (a table REVOKE also clears column grants).

use std::collections::BTreeMap;

use super::{
    acl_json, class, deps::Dep, query, quote_ident, user_schema, Graph, Node, ObjRef, RowExt,
    Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;

/// One aclitem privilege: (grantee, grantor, privilege, grantable), names
/// already quoted; grantee `PUBLIC` for everyone.
pub(crate) type AclRow = (String, String, String, bool);

/// `ALTER <word> <object> OWNER TO <owner>;` as an OWNER entry.
pub(crate) fn add_owner(g: &mut Graph, t: &Target, owner: &str) -> usize {
    let sql = format!(
        "ALTER {} {} OWNER TO {};",
        t.word,
        t.sql,
        quote_ident(owner)
    );
    let node = Node::new(t.section, "OWNER", &t.schema, &t.label())
        .owner_table(t.owner_table.clone())
        .statement(sql)
        .dep(Dep::Node(t.node))
        .dep(Dep::Role(owner.to_string()));
    g.add(node)
}

/// GRANT statements for one object's ACL items (quoted names).
pub(crate) fn grant_statements(
    out: &mut Vec<String>,
    on: &str,
    owner_q: &str,
    items: &[AclRow],
    column: Option<&str>,
) {
    // One GRANT per (grantee, grantor, grant option), in first-seen order.
    let mut groups: Vec<((String, String, bool), Vec<String>)> = Vec::new();
    for (grantee, grantor, privilege, grantable) in items {
        let key = (grantee.clone(), grantor.clone(), *grantable);
        let priv_sql = match column {
            Some(c) => format!("{privilege}({c})"),
            None => privilege.clone(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, privs)) => privs.push(priv_sql),
            None => groups.push((key, vec![priv_sql])),
        }
    }
    for ((grantee, grantor, grantable), privs) in groups {
        let grant = format!(
            "GRANT {} ON {on} TO {grantee}{};",
            privs.join(", "),
            if grantable { " WITH GRANT OPTION" } else { "" }
        );
        if grantor == owner_q {
            out.push(grant);
        } else {
            out.push(format!("SET ROLE {grantor};"));
            out.push(grant);
            out.push("RESET ROLE;".to_string());
        }
    }
}

/// The ACL entry of an object: `acl` None is the default (nothing to do
/// unless columns have grants); `columns` are (quoted column, items).
pub(crate) fn add_acl(
    g: &mut Graph,
    t: &Target,
    owner: &str,
    owner_node: Option<usize>,
    acl: Option<&[AclRow]>,
    columns: &[(String, Vec<AclRow>)],
) -> Option<usize> {
    if acl.is_none() && columns.iter().all(|(_, items)| items.is_empty()) {
        return None;
    }
    let on = format!("{} {}", t.grant_word, t.sql);
    let owner_q = quote_ident(owner);
    let mut stmts = Vec::new();
    if let Some(items) = acl {
        stmts.push(format!("REVOKE ALL ON {on} FROM PUBLIC;"));
        stmts.push(format!("REVOKE ALL ON {on} FROM {owner_q};"));
        grant_statements(&mut stmts, &on, &owner_q, items, None);
    }
    for (col, items) in columns {
        grant_statements(&mut stmts, &on, &owner_q, items, Some(col));
    }
    let mut node = Node::new(t.section, "ACL", &t.schema, &t.label())
        .owner_table(t.owner_table.clone())
        .statement(stmts.join("\n"))
        .dep(Dep::Node(t.node));
    if let Some(o) = owner_node {
        node = node.dep(Dep::Node(o));
    }
    let mut roles: Vec<&String> = Vec::new();
    for (grantee, grantor, _, _) in acl
        .unwrap_or(&[])
        .iter()
        .chain(columns.iter().flat_map(|(_, i)| i))
    {
        roles.push(grantee);
        roles.push(grantor);
    }
    for r in roles {
        if r != "PUBLIC" {
            node = node.dep(Dep::Role(unquote_role(r)));
        }
    }
    Some(g.add(node))
}

/// A role name as quote_ident printed it, back to the catalog name.
pub(crate) fn unquote_role(quoted: &str) -> String {
    match crate::pg::quote::parse_ident(quoted) {
        Some((name, "")) => name,
        _ => quoted.to_string(),
    }
}

/// OWNER and ACL entries for an object that has both.
pub(crate) fn add_owner_and_acl(
    g: &mut Graph,
    t: &Target,
    owner: &str,
    acl: Option<&[AclRow]>,
    columns: &[(String, Vec<AclRow>)],
) {
    let owner_node = add_owner(g, t, owner);
    add_acl(g, t, owner, Some(owner_node), acl, columns);
}

/// `ALTER DEFAULT PRIVILEGES` entries (post-data: they must not change the
/// privileges of the objects the restore creates).
pub(crate) async fn collect_default_privileges(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT d.oid, pg_catalog.pg_get_userbyid(d.defaclrole) AS role, n.nspname, n.oid AS nspoid, \
                d.defaclobjtype::text AS objtype, {acl} AS acl, \
                {default} AS default_acl \
         FROM pg_catalog.pg_default_acl d \
         LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace \
         WHERE d.defaclnamespace = 0 OR ({user}) \
         ORDER BY role, n.nspname NULLS FIRST, objtype",
        acl = acl_json("d.defaclacl"),
        default = acl_json("pg_catalog.acldefault(d.defaclobjtype, d.defaclrole)"),
        user = user_schema("n"),
    );
    for r in query(conn, "default privileges", &sql).await? {
        let role = r.text("role")?;
        let objtype = r.text("objtype")?;
        let what = match objtype.as_str() {
            "r" => "TABLES",
            "S" => "SEQUENCES",
            "f" => "FUNCTIONS",
            "T" => "TYPES",
            "n" => "SCHEMAS",
            other => {
                tracing::warn!("skipping default privileges for unknown object type {other:?}");
                continue;
            }
        };
        let schema = r.opt("nspname")?;
        let items: Vec<AclRow> = r.opt_json("acl")?.unwrap_or_default();
        let prefix = match &schema {
            Some(s) => format!(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {}",
                quote_ident(&role),
                quote_ident(s)
            ),
            None => format!("ALTER DEFAULT PRIVILEGES FOR ROLE {}", quote_ident(&role)),
        };
        let mut stmts = Vec::new();
        if schema.is_none() {
            // A global entry replaces the built-in defaults.
            stmts.push(format!("{prefix} REVOKE ALL ON {what} FROM PUBLIC;"));
            stmts.push(format!(
                "{prefix} REVOKE ALL ON {what} FROM {};",
                quote_ident(&role)
            ));
        }
        let mut groups: BTreeMap<(String, bool), Vec<String>> = BTreeMap::new();
        let mut order: Vec<(String, bool)> = Vec::new();
        for (grantee, _grantor, privilege, grantable) in &items {
            let key = (grantee.clone(), *grantable);
            if !groups.contains_key(&key) {
                order.push(key.clone());
            }
            groups.entry(key).or_default().push(privilege.clone());
        }
        for key in order {
            let privs = &groups[&key];
            stmts.push(format!(
                "{prefix} GRANT {} ON {what} TO {}{};",
                privs.join(", "),
                key.0,
                if key.1 { " WITH GRANT OPTION" } else { "" }
            ));
        }
        let label = format!("{what} FOR ROLE {role}");
        let mut node = Node::new(
            Section::PostData,
            "DEFAULT ACL",
            schema.as_deref().unwrap_or(""),
            &label,
        )
        .statement(stmts.join("\n"))
        .dep(Dep::Role(role.clone()));
        if let Some(nsp) = r.opt("nspoid")? {
            if let Ok(oid) = nsp.parse() {
                node = node.dep(Dep::Obj(ObjRef::new(class::PG_NAMESPACE, oid)));
            }
        }
        for (grantee, _, _, _) in &items {
            if grantee != "PUBLIC" {
                node = node.dep(Dep::Role(unquote_role(grantee)));
            }
        }
        let id = g.add(node);
        g.bind(ObjRef::new(class::PG_DEFAULT_ACL, r.oid("oid")?), id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(grantee: &str, grantor: &str, p: &str, g: bool) -> AclRow {
        (grantee.into(), grantor.into(), p.into(), g)
    }

    #[test]
    fn grants_group_by_grantee_and_switch_role_for_other_grantors() {
        let items = vec![
            item("zoo_owner", "postgres", "SELECT", true),
            item("zoo_owner", "postgres", "INSERT", true),
            item("\"Zoo Reader\"", "zoo_owner", "SELECT", false),
            item("PUBLIC", "postgres", "SELECT", false),
        ];
        let mut out = Vec::new();
        grant_statements(&mut out, "TABLE s.t", "postgres", &items, None);
        assert_eq!(
            out,
            vec![
                "GRANT SELECT, INSERT ON TABLE s.t TO zoo_owner WITH GRANT OPTION;",
                "SET ROLE zoo_owner;",
                "GRANT SELECT ON TABLE s.t TO \"Zoo Reader\";",
                "RESET ROLE;",
                "GRANT SELECT ON TABLE s.t TO PUBLIC;",
            ]
        );
    }

    #[test]
    fn column_grants_name_the_column() {
        let items = vec![
            item("r", "o", "SELECT", false),
            item("r", "o", "UPDATE", false),
        ];
        let mut out = Vec::new();
        grant_statements(&mut out, "TABLE s.t", "o", &items, Some("\"Full Name\""));
        assert_eq!(
            out,
            vec!["GRANT SELECT(\"Full Name\"), UPDATE(\"Full Name\") ON TABLE s.t TO r;"]
        );
    }

    #[test]
    fn acl_entry_revokes_defaults_first() {
        let mut g = Graph::default();
        let obj = g.add(Node::new(Section::PreData, "TABLE", "s", "t"));
        let t = Target {
            node: obj,
            section: Section::PreData,
            word: "TABLE",
            grant_word: "TABLE",
            sql: "s.t".into(),
            schema: "s".into(),
            name: "t".into(),
            owner_table: None,
        };
        assert!(add_acl(&mut g, &t, "o", None, None, &[]).is_none());
        let id = add_acl(&mut g, &t, "o", None, Some(&[]), &[]).unwrap();
        assert_eq!(
            g.nodes[id].statement,
            "REVOKE ALL ON TABLE s.t FROM PUBLIC;\nREVOKE ALL ON TABLE s.t FROM o;"
        );
        assert_eq!(unquote_role("\"Zoo Reader\""), "Zoo Reader");
        assert_eq!(unquote_role("zoo"), "zoo");
    }
}

//! The database's own properties (section `Globals`, replayed with the
//! globals): its settings (`ALTER DATABASE ... SET`), the settings of roles
//! in it (`ALTER ROLE ... IN DATABASE ... SET`), its privileges (`GRANT
//! ... ON DATABASE`) and comment. They name the database the restore
//! writes into (`current_database()`, so `--redirect-db` moves them too),
//! through `EXECUTE` in one `DO` block.

use super::acl::{grant_statements, unquote_role, AclRow};
use super::deps::Dep;
use super::globals::set_clause;
use super::{acl_json, query_one, quote_ident, quote_literal, Graph, Node, RowExt};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;
use crate::pg::quote::dollar_quote;

/// Stands for the database's name in statements built before the DO block.
const DB: &str = "\u{1}";

/// `EXECUTE` of one statement naming the current database at [`DB`].
fn execute(stmt: &str) -> String {
    let parts: Vec<String> = stmt.split(DB).map(quote_literal).collect();
    format!(
        "    EXECUTE {};",
        parts.join(" || pg_catalog.quote_ident(pg_catalog.current_database()) || ")
    )
}

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let r = query_one(
        conn,
        "database properties",
        &format!(
            "SELECT pg_catalog.pg_get_userbyid(d.datdba) AS owner, {acl} AS acl, \
                    pg_catalog.shobj_description(d.oid, 'pg_database') AS comment, \
                    (SELECT pg_catalog.json_agg(u.c ORDER BY u.ord) \
                      FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) WITH ORDINALITY AS u(c, ord) \
                      WHERE s.setdatabase = d.oid AND s.setrole = 0) AS config, \
                    (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(r.rolname, u.c) ORDER BY r.rolname, u.ord) \
                      FROM pg_catalog.pg_db_role_setting s JOIN pg_catalog.pg_roles r ON r.oid = s.setrole, \
                           pg_catalog.unnest(s.setconfig) WITH ORDINALITY AS u(c, ord) \
                      WHERE s.setdatabase = d.oid) AS role_config \
             FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()",
            acl = acl_json("d.datacl"),
        ),
    )
    .await?;
    let owner = r.text("owner")?;
    let mut stmts = Vec::new();
    let mut roles = Vec::new();
    let config: Vec<String> = r.opt_json("config")?.unwrap_or_default();
    for setting in &config {
        if let Some(set) = set_clause(setting) {
            stmts.push(format!("ALTER DATABASE {DB} {set}"));
        }
    }
    let role_config: Vec<(String, String)> = r.opt_json("role_config")?.unwrap_or_default();
    for (role, setting) in &role_config {
        if let Some(set) = set_clause(setting) {
            stmts.push(format!(
                "ALTER ROLE {} IN DATABASE {DB} {set}",
                quote_ident(role)
            ));
            roles.push(role.clone());
        }
    }
    let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
    if let Some(items) = &acl {
        let on = format!("DATABASE {DB}");
        let owner_q = quote_ident(&owner);
        stmts.push(format!("REVOKE ALL ON {on} FROM PUBLIC"));
        stmts.push(format!("REVOKE ALL ON {on} FROM {owner_q}"));
        let mut grants = Vec::new();
        grant_statements(&mut grants, &on, &owner_q, items, None);
        stmts.extend(grants.iter().map(|s| s.trim_end_matches(';').to_string()));
        for (grantee, grantor, _, _) in items {
            for role in [grantee, grantor] {
                if role != "PUBLIC" {
                    roles.push(unquote_role(role));
                }
            }
        }
    }
    if let Some(c) = r.opt("comment")? {
        stmts.push(format!("COMMENT ON DATABASE {DB} IS {}", quote_literal(&c)));
    }
    if stmts.is_empty() {
        return Ok(());
    }
    let body: Vec<String> = stmts.iter().map(|s| execute(s)).collect();
    let sql = format!(
        "DO {};",
        dollar_quote(&format!("BEGIN\n{}\nEND", body.join("\n")))
    );
    let mut node = Node::new(Section::Globals, "DATABASE PROPERTIES", "", "").statement(sql);
    for role in roles {
        node = node.dep(Dep::Role(role));
    }
    g.add(node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_name_the_current_database() {
        assert_eq!(
            execute(&format!("ALTER DATABASE {DB} SET work_mem TO '8MB'")),
            "    EXECUTE 'ALTER DATABASE ' || pg_catalog.quote_ident(pg_catalog.current_database()) || ' SET work_mem TO ''8MB''';"
        );
    }
}

//! Globals: roles, role memberships, tablespaces (section `Globals`).
//!
//! * ROLE: a `DO` block that creates the role with its attributes,
//!   password and settings only when no role of that name exists: roles
//!   already in the target (its superuser, roles shared with other
//!   databases) are left as they are. The password is the stored verifier
//!   (SCRAM or md5 hash, never clear text), read from `pg_authid` when the
//!   backup user may read it (a superuser), else left out. ROLE statements
//!   may thus hold password hashes: do not log them.
//! * ROLE GRANT: `GRANT role TO member [WITH ADMIN OPTION] GRANTED BY`.
//! * TABLESPACE: `CREATE TABLESPACE ... OWNER ... LOCATION ...`, alone in
//!   its entry because it cannot run in a transaction block. Restoring
//!   into a cluster that has a tablespace of that name (the same cluster),
//!   skip the entry: its name is the entry's `name`.
//!
//! Roles named `pg_*` are built in and left out; so are `pg_default` and
//! `pg_global`.

use super::acl::{add_acl, AclRow};
use super::comments::add_comment;
use super::deps::Dep;
use super::{
    acl_json, class, query, query_one, quote_ident, quote_literal, reloptions_sql, Graph, Node,
    ObjRef, RowExt, Target,
};
use crate::error::Result;
use crate::logical::toc::Section;
use crate::pg::conn::PgConn;
use crate::pg::quote::dollar_quote;

/// Settings whose stored value is already a quoted list.
const LIST_SETTINGS: &[&str] = &[
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "shared_preload_libraries",
    "local_preload_libraries",
];

pub(crate) async fn collect(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    collect_roles(conn, g).await?;
    collect_memberships(conn, g).await?;
    collect_tablespaces(conn, g).await
}

/// `SET name TO value` for one stored `name=value` setting.
pub(crate) fn set_clause(setting: &str) -> Option<String> {
    let (name, value) = setting.split_once('=')?;
    let value = if LIST_SETTINGS.contains(&name.to_ascii_lowercase().as_str()) {
        value.to_string()
    } else {
        quote_literal(value)
    };
    Some(format!("SET {} TO {value}", quote_ident(name)))
}

/// `ALTER ROLE r SET name TO value` for one `name=value` setting.
fn role_setting(role_q: &str, setting: &str) -> Option<String> {
    Some(format!("ALTER ROLE {role_q} {};", set_clause(setting)?))
}

async fn collect_roles(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let can_read_passwords = query_one(
        conn,
        "privileges",
        "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_authid', 'SELECT') AS ok",
    )
    .await?
    .flag("ok")?;
    let password = if can_read_passwords {
        "(SELECT a.rolpassword FROM pg_catalog.pg_authid a WHERE a.oid = r.oid)"
    } else {
        "NULL::text"
    };
    let sql = format!(
        "SELECT r.oid, r.rolname, r.rolsuper, r.rolinherit, r.rolcreaterole, r.rolcreatedb, \
                r.rolcanlogin, r.rolreplication, r.rolbypassrls, r.rolconnlimit, \
                CASE WHEN r.rolvaliduntil IS NULL THEN NULL \
                     WHEN pg_catalog.isfinite(r.rolvaliduntil) \
                     THEN pg_catalog.to_char(r.rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00' \
                     ELSE r.rolvaliduntil::text END AS validuntil, \
                {password} AS password, \
                pg_catalog.shobj_description(r.oid, 'pg_authid') AS comment, \
                (SELECT pg_catalog.json_agg(u.c ORDER BY u.ord) \
                  FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) WITH ORDINALITY AS u(c, ord) \
                  WHERE s.setrole = r.oid AND s.setdatabase = 0) AS config \
         FROM pg_catalog.pg_roles r \
         WHERE r.rolname !~ '^pg_' \
         ORDER BY r.rolname"
    );
    for r in query(conn, "roles", &sql).await? {
        let name = r.text("rolname")?;
        let q = quote_ident(&name);
        let flag = |col: &str, yes: &'static str, no: &'static str| -> Result<&'static str> {
            Ok(if r.flag(col)? { yes } else { no })
        };
        let mut attrs = vec![
            flag("rolsuper", "SUPERUSER", "NOSUPERUSER")?,
            flag("rolinherit", "INHERIT", "NOINHERIT")?,
            flag("rolcreaterole", "CREATEROLE", "NOCREATEROLE")?,
            flag("rolcreatedb", "CREATEDB", "NOCREATEDB")?,
            flag("rolcanlogin", "LOGIN", "NOLOGIN")?,
            flag("rolreplication", "REPLICATION", "NOREPLICATION")?,
            flag("rolbypassrls", "BYPASSRLS", "NOBYPASSRLS")?,
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        let limit = r.int("rolconnlimit")?;
        if limit != -1 {
            attrs.push(format!("CONNECTION LIMIT {limit}"));
        }
        if let Some(v) = r.opt("validuntil")? {
            attrs.push(format!("VALID UNTIL {}", quote_literal(&v)));
        }
        if let Some(p) = r.opt("password")? {
            attrs.push(format!("PASSWORD {}", quote_literal(&p)));
        }
        let mut body = vec![
            "BEGIN".to_string(),
            format!(
                "    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {}) THEN",
                quote_literal(&name)
            ),
            format!("        CREATE ROLE {q} WITH {};", attrs.join(" ")),
        ];
        let config: Vec<String> = r.opt_json("config")?.unwrap_or_default();
        for setting in &config {
            if let Some(s) = role_setting(&q, setting) {
                body.push(format!("        {s}"));
            }
        }
        body.push("    END IF;".into());
        body.push("END".into());
        let statement = format!("DO {};", dollar_quote(&format!("\n{}\n", body.join("\n"))));
        let node = g.add(Node::new(Section::Globals, "ROLE", "", &name).statement(statement));
        g.bind_role(&name, node);
        let t = Target {
            node,
            section: Section::Globals,
            word: "ROLE",
            grant_word: "ROLE",
            sql: q,
            schema: String::new(),
            name,
            owner_table: None,
        };
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

async fn collect_memberships(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let rows = query(
        conn,
        "role memberships",
        "SELECT r.rolname AS role, u.rolname AS member, gr.rolname AS grantor, m.admin_option \
         FROM pg_catalog.pg_auth_members m \
         JOIN pg_catalog.pg_roles r ON r.oid = m.roleid \
         JOIN pg_catalog.pg_roles u ON u.oid = m.member \
         LEFT JOIN pg_catalog.pg_roles gr ON gr.oid = m.grantor \
         WHERE u.rolname !~ '^pg_' \
         ORDER BY r.rolname, u.rolname",
    )
    .await?;
    for r in rows {
        let role = r.text("role")?;
        let member = r.text("member")?;
        let mut sql = format!("GRANT {} TO {}", quote_ident(&role), quote_ident(&member));
        if r.flag("admin_option")? {
            sql.push_str(" WITH ADMIN OPTION");
        }
        let mut node = Node::new(
            Section::Globals,
            "ROLE GRANT",
            "",
            &format!("{role} TO {member}"),
        )
        .dep(Dep::Role(role.clone()))
        .dep(Dep::Role(member.clone()));
        if let Some(grantor) = r.opt("grantor")? {
            sql.push_str(&format!(" GRANTED BY {}", quote_ident(&grantor)));
            node = node.dep(Dep::Role(grantor));
        }
        sql.push(';');
        g.add(node.statement(sql));
    }
    Ok(())
}

async fn collect_tablespaces(conn: &mut PgConn, g: &mut Graph) -> Result<()> {
    let sql = format!(
        "SELECT t.oid, t.spcname, pg_catalog.pg_get_userbyid(t.spcowner) AS owner, \
                pg_catalog.pg_tablespace_location(t.oid) AS location, \
                pg_catalog.array_to_json(t.spcoptions) AS options, {acl} AS acl, \
                pg_catalog.shobj_description(t.oid, 'pg_tablespace') AS comment \
         FROM pg_catalog.pg_tablespace t \
         WHERE t.spcname NOT IN ('pg_default', 'pg_global') \
         ORDER BY t.spcname",
        acl = acl_json("t.spcacl"),
    );
    for r in query(conn, "tablespaces", &sql).await? {
        let name = r.text("spcname")?;
        let q = quote_ident(&name);
        let owner = r.text("owner")?;
        let mut sql = format!(
            "CREATE TABLESPACE {q} OWNER {} LOCATION {}",
            quote_ident(&owner),
            quote_literal(&r.opt("location")?.unwrap_or_default())
        );
        let options: Vec<String> = r.opt_json("options")?.unwrap_or_default();
        if !options.is_empty() {
            sql.push_str(&format!(" WITH ({})", reloptions_sql(&options, "")));
        }
        sql.push(';');
        let node = g.add(
            Node::new(Section::Globals, "TABLESPACE", "", &name)
                .statement(sql)
                .dep(Dep::Role(owner.clone())),
        );
        g.bind(ObjRef::new(class::PG_TABLESPACE, r.oid("oid")?), node);
        let t = Target {
            node,
            section: Section::Globals,
            word: "TABLESPACE",
            grant_word: "TABLESPACE",
            sql: q,
            schema: String::new(),
            name,
            owner_table: None,
        };
        let acl: Option<Vec<AclRow>> = r.opt_json("acl")?;
        add_acl(g, &t, &owner, None, acl.as_deref(), &[]);
        add_comment(g, &t, r.opt("comment")?.as_deref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_settings_quote_values_but_not_lists() {
        assert_eq!(
            role_setting("r", "work_mem=64MB").unwrap(),
            "ALTER ROLE r SET work_mem TO '64MB';"
        );
        assert_eq!(
            role_setting("r", "search_path=a, \"B\"").unwrap(),
            "ALTER ROLE r SET search_path TO a, \"B\";"
        );
        assert!(role_setting("r", "broken").is_none());
    }
}

//! COMMENT entries: one per object, holding the object's own comment and
//! those of its columns.

use super::{deps::Dep, quote_literal, Graph, Node, Target};

/// A COMMENT entry for `t` (its comment, if any, then `columns`: (quoted
/// column, comment)); None when there is nothing to say.
pub(crate) fn add_comments(
    g: &mut Graph,
    t: &Target,
    comment: Option<&str>,
    columns: &[(String, String)],
) -> Option<usize> {
    let mut stmts = Vec::new();
    if let Some(c) = comment {
        stmts.push(format!(
            "COMMENT ON {} {} IS {};",
            t.word,
            t.sql,
            quote_literal(c)
        ));
    }
    for (col, c) in columns {
        stmts.push(format!(
            "COMMENT ON COLUMN {}.{col} IS {};",
            t.sql,
            quote_literal(c)
        ));
    }
    if stmts.is_empty() {
        return None;
    }
    let node = Node::new(t.section, "COMMENT", &t.schema, &t.label())
        .owner_table(t.owner_table.clone())
        .statement(stmts.join("\n"))
        .dep(Dep::Node(t.node));
    Some(g.add(node))
}

/// A COMMENT entry for an object without columns.
pub(crate) fn add_comment(g: &mut Graph, t: &Target, comment: Option<&str>) -> Option<usize> {
    add_comments(g, t, comment, &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logical::toc::Section;

    #[test]
    fn comments_quote_their_text() {
        let mut g = Graph::default();
        let obj = g.add(Node::new(Section::PreData, "TABLE", "s", "t"));
        let t = Target {
            node: obj,
            section: Section::PreData,
            word: "TABLE",
            grant_word: "TABLE",
            sql: "s.\"T\"".into(),
            schema: "s".into(),
            name: "T".into(),
            owner_table: None,
        };
        assert!(add_comment(&mut g, &t, None).is_none());
        let id =
            add_comments(&mut g, &t, Some("it's"), &[("\"C\"".into(), "a\\b".into())]).unwrap();
        assert_eq!(
            g.nodes[id].statement,
            "COMMENT ON TABLE s.\"T\" IS 'it''s';\nCOMMENT ON COLUMN s.\"T\".\"C\" IS E'a\\\\b';"
        );
        assert_eq!(g.nodes[id].kind, "COMMENT");
        assert_eq!(g.nodes[id].name, "TABLE T");
    }
}

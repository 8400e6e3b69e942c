//! Unit tests of the check's helpers (edit distance, lines from spans); the checks themselves
//! are tested end to end in `tests/modules.rs`.

use hcl::edit::Span;

use super::{suggest::edit_distance, *};

#[test]
fn edit_distance_counts_single_edits() {
    assert_eq!(edit_distance("instance_typ", "instance_type"), 1);
    assert_eq!(edit_distance("volume_type", "volume_type"), 0);
    assert_eq!(edit_distance("abc", "xyz"), 3);
}

#[test]
fn lines_come_from_the_parser_spans() {
    let text = "# c\nresource \"a_b\" \"c\" {\n  x = 1\n\n  inner {\n    y = \"z\"\n  }\n}\n";
    let body = hcl::edit::parser::parse_body(text).unwrap();
    let file = SourceFile {
        path: PathBuf::from("t.tf"),
        line_starts: std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect(),
        body,
    };
    let block = file.body.blocks().next().unwrap();
    assert_eq!(file.line(block.ident.span()), Some(2));
    let x = block.body.get_attribute("x").unwrap();
    assert_eq!(file.line(x.key.span()), Some(3));
    let inner = block.body.get_blocks("inner").next().unwrap();
    assert_eq!(file.line(inner.ident.span()), Some(5));
    assert_eq!(file.line(inner.body.get_attribute("y").unwrap().key.span()), Some(6));
}

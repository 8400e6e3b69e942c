//! "Did you mean" for an unknown name: the closest name of the schema, by edit distance.

use crate::schema::BlockSchema;

/// `; did you mean "x"?` for the closest name in the schema, if one is close.
pub(super) fn suggest(name: &str, schema: &BlockSchema) -> String {
    suggest_among(name, schema.names())
}

pub(super) fn suggest_among<'n>(name: &str, names: impl Iterator<Item = &'n str>) -> String {
    let best = names.map(|candidate| (edit_distance(name, candidate), candidate)).min();
    match best {
        Some((distance, candidate)) if distance <= 2.max(name.len() / 4) => {
            format!("; did you mean \"{candidate}\"?")
        }
        _ => String::new(),
    }
}

pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

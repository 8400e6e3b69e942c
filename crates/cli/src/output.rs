//! How results look: aligned tables and short times for people, the API's JSON for scripts.
//! Results go to standard output; progress goes to standard error (see `Progress`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::args::Output;

/// Prints `value` as JSON, or the table `render` makes of it, on standard output.
pub(crate) fn show<T: Serialize>(
    output: Output,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        Output::Json => json(value),
        Output::Table => {
            print!("{}", render(value));
            Ok(())
        }
    }
}

/// Prints `value` as pretty JSON on standard output.
pub(crate) fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Columns padded to their widest cell; the last column is not padded.
pub(crate) fn table<const N: usize>(
    headers: [&str; N],
    rows: impl IntoIterator<Item = [String; N]>,
) -> String {
    let rows: Vec<[String; N]> = rows.into_iter().collect();
    let mut widths = headers.map(|h| h.chars().count());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (index, cell) in cells.enumerate() {
            if index + 1 < N {
                text.push_str(&format!("{cell:<width$}  ", width = widths[index]));
            } else {
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in &rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// `2026-11-30 06:04:37` (UTC), or `-`.
pub(crate) fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(|| "-".to_owned(), |at| at.format("%Y-%m-%d %H:%M:%S").to_string())
}

pub(crate) fn or_dash(text: Option<impl ToString>) -> String {
    text.map_or_else(|| "-".to_owned(), |t| t.to_string())
}

/// Where lines go: progress on standard error (silenced by `--quiet`), or, when the lines are
/// the result (`nimctl logs`), standard output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Progress {
    Stderr { quiet: bool },
    Stdout,
}

impl Progress {
    pub(crate) fn say(&self, text: impl AsRef<str>) {
        match self {
            Self::Stderr { quiet: true } => {}
            Self::Stderr { quiet: false } => eprintln!("{}", text.as_ref()),
            Self::Stdout => println!("{}", text.as_ref()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let text = table(
            ["NAME", "STATUS", "IP"],
            [
                ["local-0".to_owned(), "healthy".to_owned(), "127.0.0.1".to_owned()],
                ["b".to_owned(), "unreachable".to_owned(), "-".to_owned()],
            ],
        );
        assert_eq!(
            text,
            "NAME     STATUS       IP\nlocal-0  healthy      127.0.0.1\nb        unreachable  -\n"
        );
    }
}

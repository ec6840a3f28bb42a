//! Reading seed files row by row with line numbers: TOML arrays of tables, duplicate detection and
//! the bookkeeping shared by every file (problems found, rows rejected).

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::Problem;

/// Byte offset to 1-based line number.
pub(crate) struct Lines {
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { starts }
    }

    pub(crate) fn line_of(&self, offset: usize) -> usize {
        // The number of line starts at or before the offset.
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

/// The rows of one file that passed validation, and the problems of those that did not.
#[derive(Debug)]
pub(crate) struct Parsed<T> {
    pub file: String,
    pub rows: Vec<T>,
    pub problems: Vec<Problem>,
    /// Rows refused (a row with several problems counts once).
    pub rejected: usize,
}

impl<T> Parsed<T> {
    pub(crate) fn new(file: &str) -> Self {
        Parsed {
            file: file.to_owned(),
            rows: Vec::new(),
            problems: Vec::new(),
            rejected: 0,
        }
    }

    /// Records a problem that does not reject a row (a file-level problem).
    pub(crate) fn problem(&mut self, line: usize, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            message: message.into(),
        });
    }

    /// Records a problem and counts its row as rejected.
    pub(crate) fn reject(&mut self, line: usize, message: impl Into<String>) {
        self.problem(line, message);
        self.rejected += 1;
    }

    /// Problems in file order.
    pub(crate) fn finish(mut self) -> Self {
        self.problems.sort_by_key(|p| p.line);
        self
    }
}

/// The keys that occur more than once, with every line they occur on.
pub(crate) fn duplicates<'a>(
    keys: impl IntoIterator<Item = (&'a str, usize)>,
) -> HashMap<String, Vec<usize>> {
    let mut lines: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (key, line) in keys {
        lines.entry(key).or_default().push(line);
    }
    lines
        .into_iter()
        .filter(|(_, lines)| lines.len() > 1)
        .map(|(key, lines)| (key.to_owned(), lines))
        .collect()
}

/// `duplicate code X (also on line 187)`, naming the other occurrences in the same file.
pub(crate) fn duplicate_message(what: &str, key: &str, lines: &[usize], this: usize) -> String {
    let others: Vec<String> = lines
        .iter()
        .filter(|&&l| l != this)
        .map(usize::to_string)
        .collect();
    let plural = if others.len() == 1 { "line" } else { "lines" };
    format!(
        "duplicate {what} {key} (also on {plural} {})",
        others.join(", ")
    )
}

/// A parsed TOML file whose top-level keys are taken one by one, with their lines.
pub(crate) struct TomlFile<'i> {
    pub lines: Lines,
    keys: Vec<(String, Spanned<DeValue<'i>>)>,
}

/// One element of a TOML array of tables (`[[worker]]` or `worker = [{ … }]`), with its line.
pub(crate) struct TomlRow<'i> {
    pub line: usize,
    value: Spanned<DeValue<'i>>,
}

impl<'i> TomlFile<'i> {
    /// Parses `text`; a syntax error refuses the whole file and is reported with its line.
    pub(crate) fn parse<T>(parsed: &mut Parsed<T>, text: &'i str) -> Option<Self> {
        let lines = Lines::new(text);
        match DeTable::parse(text) {
            Ok(table) => {
                let keys = table
                    .into_inner()
                    .into_iter()
                    .map(|(k, v)| (k.into_inner().into_owned(), v))
                    .collect();
                Some(TomlFile { lines, keys })
            }
            Err(e) => {
                let line = e.span().map_or(1, |span| lines.line_of(span.start));
                parsed.problem(
                    line,
                    format!(
                        "not a valid TOML file: {}: no row imported",
                        e.message().trim()
                    ),
                );
                None
            }
        }
    }

    /// Whether the file has the top-level key `key` (not taken yet).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.keys.iter().any(|(k, _)| k == key)
    }

    /// Takes the top-level value `key`, with its line.
    pub(crate) fn take(&mut self, key: &str) -> Option<(usize, Spanned<DeValue<'i>>)> {
        let at = self.keys.iter().position(|(k, _)| k == key)?;
        let (_, value) = self.keys.remove(at);
        Some((self.lines.line_of(value.span().start), value))
    }

    /// Takes the rows of the array of tables `key` (none when the key is absent).
    pub(crate) fn rows<T>(&mut self, parsed: &mut Parsed<T>, key: &str) -> Vec<TomlRow<'i>> {
        let Some((line, value)) = self.take(key) else {
            return Vec::new();
        };
        match value.into_inner() {
            DeValue::Array(array) => array
                .into_iter()
                .map(|value| TomlRow {
                    line: self.lines.line_of(value.span().start),
                    value,
                })
                .collect(),
            other => {
                parsed.problem(
                    line,
                    format!(
                        "{key} is a {}, not an array of tables: no row imported",
                        other.type_str()
                    ),
                );
                Vec::new()
            }
        }
    }

    /// Reports the keys nobody took: probably a typo, so they are named.
    pub(crate) fn finish<T>(self, parsed: &mut Parsed<T>) {
        for (key, value) in self.keys {
            let line = self.lines.line_of(value.span().start);
            parsed.problem(line, format!("unknown key {key:?}: ignored"));
        }
    }

    /// Decodes a value as `T`; the error names the line of the offending field when known.
    pub(crate) fn decode<T: Deserialize<'i>>(
        &self,
        line: usize,
        value: Spanned<DeValue<'i>>,
    ) -> Result<T, (usize, String)> {
        T::deserialize(value.into_deserializer()).map_err(|e| {
            let at = e.span().map_or(line, |span| self.lines.line_of(span.start));
            (at, e.message().trim().to_owned())
        })
    }

    pub(crate) fn decode_row<T: Deserialize<'i>>(
        &self,
        row: TomlRow<'i>,
    ) -> Result<T, (usize, String)> {
        self.decode(row.line, row.value)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_counted_from_one() {
        let lines = Lines::new("a\nbc\n\nd");
        assert_eq!(lines.line_of(0), 1);
        assert_eq!(lines.line_of(1), 1);
        assert_eq!(lines.line_of(2), 2);
        assert_eq!(lines.line_of(5), 3);
        assert_eq!(lines.line_of(6), 4);
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Row {
        a: i64,
    }

    type Decoded = Result<i64, (usize, String)>;

    fn decode_all(text: &str) -> (Vec<usize>, Vec<Decoded>, Parsed<()>) {
        let mut parsed = Parsed::new("t.toml");
        let mut file = TomlFile::parse(&mut parsed, text).unwrap();
        let rows = file.rows(&mut parsed, "row");
        let lines = rows.iter().map(|r| r.line).collect();
        let values = rows
            .into_iter()
            .map(|r| file.decode_row::<Row>(r).map(|r| r.a))
            .collect();
        file.finish(&mut parsed);
        (lines, values, parsed)
    }

    #[test]
    fn toml_rows_know_their_lines_in_both_syntaxes() {
        let (lines, values, parsed) = decode_all("# comment\n\n[[row]]\na = 1\n\n[[row]]\na = 2\n");
        assert_eq!(lines, [3, 6]);
        assert_eq!(values, [Ok(1), Ok(2)]);
        assert!(parsed.problems.is_empty());

        let (lines, _, _) = decode_all("row = [\n  { a = 1 },\n  # comment\n  { a = 2 },\n]\n");
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn field_errors_name_the_field_line_and_unknown_keys_are_reported() {
        let (_, values, parsed) =
            decode_all("other = 1\n[[row]]\na = 1\nb = 2\n\n[[row]]\na = \"x\"\n");
        let errors: Vec<usize> = values
            .iter()
            .filter_map(|v| v.as_ref().err().map(|e| e.0))
            .collect();
        assert_eq!(errors, [4, 7], "{values:?}");
        assert_eq!(parsed.problems.len(), 1);
        assert_eq!(parsed.problems[0].line, 1);
    }

    #[test]
    fn syntax_errors_refuse_the_file_with_their_line() {
        let mut parsed: Parsed<()> = Parsed::new("t.toml");
        assert!(TomlFile::parse(&mut parsed, "[[row]]\na = 1\nb = = 2\n").is_none());
        assert_eq!(parsed.problems[0].line, 3, "{:?}", parsed.problems);
    }

    #[test]
    fn every_occurrence_of_a_duplicate_is_named() {
        let dups = duplicates([("a", 2), ("b", 3), ("a", 5), ("a", 9)]);
        assert_eq!(dups.len(), 1);
        assert_eq!(dups["a"], [2, 5, 9]);
        assert_eq!(
            duplicate_message("code", "a", &dups["a"], 5),
            "duplicate code a (also on lines 2, 9)"
        );
        assert_eq!(
            duplicate_message("code", "a", &[2, 5], 5),
            "duplicate code a (also on line 2)"
        );
    }
}

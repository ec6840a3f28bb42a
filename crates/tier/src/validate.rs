//! The checks every request field goes through at the gRPC edge, in one place. Each returns the
//! parsed value the handlers use, or `Error::invalid("field.path", "what is wrong")`.
//!
//! Text: no control characters (free text may hold `\n` and `\t`; `\r\n` becomes `\n`); leading
//! and trailing whitespace and invisible characters are dropped, so text made only of them is
//! empty, and required text must not be; lengths are counted in characters. Identifiers and codes
//! are short ASCII. Timestamps lie between 2000 and a few minutes ahead of our clock. Attachments
//! are references (id, type, size, SHA-256); the upload arrives with the field-work capability.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use uuid::Uuid;
use wangge_domain::{OrgCode, Scope};
use wangge_proto as pb;

use crate::error::Error;

/// Longest client id and attachment id.
pub const MAX_ID_CHARS: usize = 64;
/// Longest category, department or scheme code.
pub const MAX_CODE_CHARS: usize = 64;
/// Longest description of a report.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Longest note (reason, result, remark) on a step, and the resolution of a self-handled report.
pub const MAX_NOTE_CHARS: usize = 2000;
/// Longest caption of an attachment.
pub const MAX_CAPTION_CHARS: usize = 200;
/// Most attachments on one step.
pub const MAX_ATTACHMENTS: usize = 20;
/// Largest attachment: a photo or a short video from a phone.
pub const MAX_ATTACHMENT_BYTES: u64 = 50 * 1024 * 1024;
/// Longest content type (`image/jpeg`).
pub const MAX_CONTENT_TYPE_CHARS: usize = 100;
/// Most org codes in one listing request.
pub const MAX_LISTED_CODES: usize = 100;
/// The earliest plausible capture time: 2000-01-01T00:00:00Z.
pub const EARLIEST_SECONDS: i64 = 946_684_800;
/// How far a device clock may run ahead of ours.
pub const MAX_CLOCK_AHEAD_SECONDS: i64 = 300;

/// Longest part of a bad value quoted back in an error.
const QUOTE_CHARS: usize = 40;

/// A bad value, quoted (and cut short) for an error message.
pub fn quote(value: &str) -> String {
    let mut chars = value.chars();
    let head: String = chars.by_ref().take(QUOTE_CHARS).collect();
    if chars.next().is_some() {
        format!("{head:?}…")
    } else {
        format!("{head:?}")
    }
}

/// Characters that show nothing: whitespace, zero-width spaces and joiners, the byte-order mark,
/// direction marks, variation selectors, fillers. Text made only of these is blank.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Whether text may run over several lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    One,
    Many,
}

/// The common text check: control characters, trimming, length. May return an empty string; the
/// error is what is wrong, for the caller to name the field.
fn text(value: &str, max_chars: usize, lines: Lines) -> Result<String, String> {
    let value = match lines {
        Lines::Many if value.contains("\r\n") => Cow::Owned(value.replace("\r\n", "\n")),
        _ => Cow::Borrowed(value),
    };
    let allowed = |c: char| lines == Lines::Many && matches!(c, '\n' | '\t');
    let bad = value.chars().enumerate().find(|&(_, c)| {
        (c.is_control() && !allowed(c))
            // Line and paragraph separators break a single line as \n does.
            || (lines == Lines::One && matches!(c, '\u{2028}' | '\u{2029}'))
    });
    if let Some((at, c)) = bad {
        let hint = match lines {
            Lines::Many => "; only line breaks and tabs are allowed",
            Lines::One => "; it must be a single line",
        };
        return Err(format!(
            "control character U+{:04X} at character {at}{hint}",
            c as u32
        ));
    }
    let trimmed = value.trim_matches(is_invisible);
    let length = trimmed.chars().count();
    if length > max_chars {
        return Err(format!("{length} characters, at most {max_chars} allowed"));
    }
    Ok(trimmed.to_owned())
}

/// Text the field cannot go without: not empty once trimmed.
fn required(text: Result<String, String>) -> Result<String, String> {
    match text {
        Ok(text) if text.is_empty() => {
            Err("required, and must not be blank (spaces or invisible characters only)".to_owned())
        }
        other => other,
    }
}

fn named(
    field: impl Into<Cow<'static, str>>,
    result: Result<String, String>,
) -> Result<String, Error> {
    result.map_err(|message| Error::invalid(field, message))
}

/// Optional single-line text (a caption): empty when blank.
pub fn optional_line(
    field: impl Into<Cow<'static, str>>,
    value: &str,
    max_chars: usize,
) -> Result<String, Error> {
    named(field, text(value, max_chars, Lines::One))
}

/// Required free text (a description): several lines allowed.
pub fn free_text(
    field: impl Into<Cow<'static, str>>,
    value: &str,
    max_chars: usize,
) -> Result<String, Error> {
    named(field, required(text(value, max_chars, Lines::Many)))
}

/// Optional free text (a remark): empty when blank.
pub fn optional_free_text(
    field: impl Into<Cow<'static, str>>,
    value: &str,
    max_chars: usize,
) -> Result<String, Error> {
    named(field, text(value, max_chars, Lines::Many))
}

/// The remark, reason or result of a step: free text of at most [`MAX_NOTE_CHARS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    /// A remark the step may go without.
    pub fn optional(field: impl Into<Cow<'static, str>>, value: &str) -> Result<Note, Error> {
        optional_free_text(field, value, MAX_NOTE_CHARS).map(Note)
    }

    /// A reason or result the step needs (reject, escalate, return, handled).
    pub fn required(field: impl Into<Cow<'static, str>>, value: &str) -> Result<Note, Error> {
        let field = field.into();
        match optional_free_text(field.clone(), value, MAX_NOTE_CHARS)? {
            note if note.is_empty() => Err(Error::invalid(
                field,
                "this step needs a reason (or a result); blank text does not count",
            )),
            note => Ok(Note(note)),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// An id a client made up (client id, attachment id): 1-64 ASCII letters, digits, `-` or `_`.
pub fn identifier(field: impl Into<Cow<'static, str>>, value: &str) -> Result<String, Error> {
    let value = value.trim();
    let ok = !value.is_empty()
        && value.len() <= MAX_ID_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{} is not 1-{MAX_ID_CHARS} letters, digits, - or _",
                quote(value)
            ),
        ))
    }
}

/// A registry code (category, department, scheme): 1-64 ASCII letters, digits, `.`, `-` or `_`.
pub fn code(field: impl Into<Cow<'static, str>>, value: &str) -> Result<String, Error> {
    let value = value.trim();
    if value.is_empty() {
        return Err(Error::invalid(field, "required"));
    }
    let ok = value.len() <= MAX_CODE_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{} is not a code (1-{MAX_CODE_CHARS} letters, digits, ., - or _)",
                quote(value)
            ),
        ))
    }
}

/// A code that may be left empty: `None` then.
pub fn optional_code(
    field: impl Into<Cow<'static, str>>,
    value: &str,
) -> Result<Option<String>, Error> {
    if value.trim().is_empty() {
        Ok(None)
    } else {
        code(field, value).map(Some)
    }
}

/// A case id: a UUID.
pub fn case_id(value: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(value.trim())
        .map_err(|_| Error::invalid("case_id", format!("{} is not a UUID", quote(value))))
}

/// A 12-digit org code.
pub fn org_code(field: impl Into<Cow<'static, str>>, value: &str) -> Result<OrgCode, Error> {
    let value = value.trim();
    value
        .parse()
        .map_err(|e| Error::invalid(field, format!("{}: {e}", quote(value))))
}

/// An org or grid code prefix inside the scope: empty means the whole scope, a wider area than the
/// scope means the scope.
pub fn prefix_in_scope(
    scope: &Scope,
    field: impl Into<Cow<'static, str>>,
    code: &str,
) -> Result<String, Error> {
    let code = code.trim();
    if code.is_empty() {
        return Ok(scope.prefix().to_owned());
    }
    if !code.bytes().all(|b| b.is_ascii_digit()) || code.len() > 15 {
        return Err(Error::invalid(
            field,
            format!("{} is not an org or grid code", quote(code)),
        ));
    }
    // A full 12-digit org code stands for its significant prefix.
    let prefix = match code.parse::<OrgCode>() {
        Ok(org) => org.prefix().to_owned(),
        Err(_) => code.to_owned(),
    };
    if prefix.starts_with(scope.prefix()) {
        Ok(prefix)
    } else if scope.prefix().starts_with(&prefix) {
        // A wider area than the scope: its part in the scope.
        Ok(scope.prefix().to_owned())
    } else {
        Err(Error::invalid(
            field,
            format!("{code} is outside scope {scope}"),
        ))
    }
}

/// Several org or grid codes, each inside the scope; none means the whole scope.
pub fn prefixes_in_scope(
    scope: &Scope,
    field: &'static str,
    codes: &[String],
) -> Result<Vec<String>, Error> {
    if codes.len() > MAX_LISTED_CODES {
        return Err(Error::invalid(
            field,
            format!("{} codes, at most {MAX_LISTED_CODES} allowed", codes.len()),
        ));
    }
    if codes.is_empty() {
        return Ok(vec![scope.prefix().to_owned()]);
    }
    let mut prefixes = codes
        .iter()
        .enumerate()
        .map(|(i, code)| prefix_in_scope(scope, format!("{field}[{i}]"), code))
        .collect::<Result<Vec<_>, _>>()?;
    prefixes.sort();
    prefixes.dedup();
    Ok(prefixes)
}

/// A point on earth, required.
pub fn location(field: &'static str, point: Option<pb::GeoPoint>) -> Result<pb::GeoPoint, Error> {
    let point = point.ok_or_else(|| Error::invalid(field, "required"))?;
    let in_range = point.longitude.is_finite()
        && point.latitude.is_finite()
        && (-180.0..=180.0).contains(&point.longitude)
        && (-90.0..=90.0).contains(&point.latitude);
    if in_range {
        Ok(point)
    } else {
        Err(Error::invalid(
            field,
            "longitude must be within ±180 and latitude within ±90",
        ))
    }
}

/// A time a device recorded: from 2000 on, at most a few minutes ahead of `now`.
pub fn timestamp(
    field: &'static str,
    value: &prost_types::Timestamp,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, Error> {
    time_within(field, value, now, MAX_CLOCK_AHEAD_SECONDS)
}

/// A time from 2000 on and at most `ahead_seconds` after `now`: what lies outside is a typing or
/// clock error, never a time a request means.
pub fn time_within(
    field: &'static str,
    value: &prost_types::Timestamp,
    now: DateTime<Utc>,
    ahead_seconds: i64,
) -> Result<DateTime<Utc>, Error> {
    let nanos = u32::try_from(value.nanos)
        .ok()
        .filter(|n| *n < 1_000_000_000)
        .ok_or_else(|| Error::invalid(field, format!("nanos {} outside 0..1e9", value.nanos)))?;
    if value.seconds < EARLIEST_SECONDS {
        return Err(Error::invalid(field, "before 2000-01-01"));
    }
    if value.seconds > now.timestamp().saturating_add(ahead_seconds) {
        let ahead = if ahead_seconds >= 86_400 {
            format!("{} days", ahead_seconds / 86_400)
        } else {
            format!("{ahead_seconds} s")
        };
        return Err(Error::invalid(
            field,
            format!("lies in the future (more than {ahead} ahead of ours)"),
        ));
    }
    DateTime::from_timestamp(value.seconds, nanos)
        .ok_or_else(|| Error::invalid(field, "not a representable time"))
}

/// An urgency; unspecified means normal.
pub fn urgency(field: &'static str, value: i32) -> Result<pb::Urgency, Error> {
    match pb::Urgency::try_from(value) {
        Ok(pb::Urgency::Unspecified) => Ok(pb::Urgency::Normal),
        Ok(urgency) => Ok(urgency),
        Err(_) => Err(Error::invalid(field, format!("unknown urgency {value}"))),
    }
}

/// Case states to filter by, each known, without repeats; none means every state.
pub fn states(field: &'static str, values: &[i32]) -> Result<Vec<pb::CaseState>, Error> {
    let mut states = Vec::new();
    for (i, &value) in values.iter().enumerate() {
        match pb::CaseState::try_from(value) {
            Ok(pb::CaseState::Unspecified) | Err(_) => {
                return Err(Error::invalid(
                    format!("{field}[{i}]"),
                    format!("unknown state {value}"),
                ));
            }
            Ok(state) if !states.contains(&state) => states.push(state),
            Ok(_) => {}
        }
    }
    Ok(states)
}

/// A MIME type as `type/subtype`, lowercase, of RFC 6838 name characters, without parameters.
fn content_type(field: String, value: &str) -> Result<String, Error> {
    let value = value.trim().to_ascii_lowercase();
    let name = |part: &str| {
        !part.is_empty()
            && part.len() <= 64
            && part.as_bytes()[0].is_ascii_alphanumeric()
            && part.bytes().all(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(
                        b,
                        b'!' | b'#' | b'$' | b'&' | b'-' | b'^' | b'_' | b'.' | b'+'
                    )
            })
    };
    let ok = value.len() <= MAX_CONTENT_TYPE_CHARS
        && value
            .split_once('/')
            .is_some_and(|(kind, subtype)| name(kind) && name(subtype));
    if ok {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{} is not a media type like image/jpeg (at most {MAX_CONTENT_TYPE_CHARS} characters)",
                quote(&value)
            ),
        ))
    }
}

fn sha256(field: String, value: &str) -> Result<String, Error> {
    let ok = value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if ok {
        Ok(value.to_owned())
    } else {
        Err(Error::invalid(field, "must be 64 lowercase hex digits"))
    }
}

fn attachment(field: &str, i: usize, value: pb::Attachment) -> Result<pb::Attachment, Error> {
    let at = |part: &str| format!("{field}[{i}].{part}");
    let id = identifier(at("id"), &value.id)?;
    let content_type = content_type(at("content_type"), &value.content_type)?;
    if value.size_bytes == 0 || value.size_bytes > MAX_ATTACHMENT_BYTES {
        return Err(Error::invalid(
            at("size_bytes"),
            format!("must be 1 to {MAX_ATTACHMENT_BYTES} bytes"),
        ));
    }
    let sha256 = sha256(at("sha256"), &value.sha256)?;
    let caption = optional_line(at("caption"), &value.caption, MAX_CAPTION_CHARS)?;
    Ok(pb::Attachment {
        id,
        content_type,
        size_bytes: value.size_bytes,
        sha256,
        caption,
    })
}

/// The attachments of a step, each a checked reference, no id twice.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attachments(Vec<pb::Attachment>);

impl Attachments {
    pub fn parse(field: &'static str, values: Vec<pb::Attachment>) -> Result<Attachments, Error> {
        if values.len() > MAX_ATTACHMENTS {
            return Err(Error::invalid(
                field,
                format!(
                    "{} attachments, at most {MAX_ATTACHMENTS} per step",
                    values.len()
                ),
            ));
        }
        let mut parsed: Vec<pb::Attachment> = Vec::with_capacity(values.len());
        for (i, value) in values.into_iter().enumerate() {
            let value = attachment(field, i, value)?;
            if parsed.iter().any(|a| a.id == value.id) {
                return Err(Error::invalid(
                    format!("{field}[{i}].id"),
                    format!("{} appears twice", quote(&value.id)),
                ));
            }
            parsed.push(value);
        }
        Ok(Attachments(parsed))
    }

    pub fn as_slice(&self) -> &[pb::Attachment] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<pb::Attachment> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field.into_owned(),
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    pub(crate) fn photo(id: &str) -> pb::Attachment {
        pb::Attachment {
            id: id.into(),
            content_type: "image/jpeg".into(),
            size_bytes: 123_456,
            sha256: "ab".repeat(32),
            caption: "现场照片".into(),
        }
    }

    #[test]
    fn text_refuses_control_characters_and_keeps_line_breaks_in_free_text() {
        assert!(optional_line("f", "a\u{0}b", 10).is_err());
        assert!(optional_line("f", "a\nb", 10).is_err());
        assert!(optional_line("f", "a\u{2028}b", 10).is_err());
        assert!(optional_line("f", "a\u{7f}b", 10).is_err());
        assert!(optional_line("f", "a\u{85}b", 10).is_err());
        assert_eq!(free_text("f", "a\r\nb\tc", 10).unwrap(), "a\nb\tc");
        assert!(free_text("f", "a\rb", 10).is_err());
        assert!(free_text("f", "a\u{1b}[31m", 10).is_err());
        let error = free_text("description", "x\u{0}", 10)
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("description: control character U+0000"),
            "{error}"
        );
    }

    #[test]
    fn blank_text_is_empty_and_required_text_must_not_be() {
        for blank in [
            "",
            " ",
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}",
            "\u{FEFF} \u{2060}",
            "\u{3000}",
            "\n\t",
        ] {
            assert_eq!(field_of(free_text("description", blank, 10)), "description");
            assert_eq!(optional_free_text("note", blank, 10).unwrap(), "");
        }
        assert_eq!(
            free_text("f", "\u{FEFF} 路灯 \u{200B}", 10).unwrap(),
            "路灯"
        );
        // Inside text, a zero-width joiner belongs to an emoji sequence.
        assert_eq!(
            optional_line("f", "👨\u{200D}👩", 10).unwrap(),
            "👨\u{200D}👩"
        );
    }

    #[test]
    fn lengths_count_characters_not_bytes() {
        assert!(free_text("f", &"路".repeat(10), 10).is_ok());
        assert!(free_text("f", &"路".repeat(11), 10).is_err());
    }

    #[test]
    fn identifiers_and_codes_are_short_ascii() {
        assert_eq!(identifier("client_id", " abc-1_2 ").unwrap(), "abc-1_2");
        for bad in ["", "a b", "../x", "é", &"a".repeat(65)] {
            assert_eq!(field_of(identifier("client_id", bad)), "client_id");
        }
        assert_eq!(code("category_code", "szcg-01-01").unwrap(), "szcg-01-01");
        assert!(code("category_code", "szcg 01").is_err());
        assert_eq!(optional_code("scheme", " ").unwrap(), None);
        assert!(case_id("nope").is_err());
        let long = "x".repeat(10_000);
        let message = case_id(&long).unwrap_err().to_string();
        assert!(
            message.len() < 100,
            "a bad value is not echoed whole: {message}"
        );
    }

    #[test]
    fn timestamps_lie_between_2000_and_a_few_minutes_ahead() {
        let now = Utc::now();
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert!(timestamp("captured_at", &at(now.timestamp() - 60, 5), now).is_ok());
        assert!(timestamp("captured_at", &at(now.timestamp() + 200, 0), now).is_ok());
        for bad in [
            at(now.timestamp() + 400, 0),
            at(EARLIEST_SECONDS - 1, 0),
            at(now.timestamp(), -1),
            at(now.timestamp(), 1_000_000_000),
            at(i64::MAX, 0),
            at(i64::MIN, 0),
        ] {
            assert_eq!(field_of(timestamp("captured_at", &bad, now)), "captured_at");
        }
    }

    #[test]
    fn attachments_are_checked_reference_by_reference() {
        assert!(Attachments::parse("attachments", vec![photo("p1"), photo("p2")]).is_ok());
        let with = |change: fn(&mut pb::Attachment)| {
            let mut bad = photo("p2");
            change(&mut bad);
            field_of(Attachments::parse("attachments", vec![photo("p1"), bad]))
        };
        assert_eq!(with(|a| a.id = "../etc".into()), "attachments[1].id");
        assert_eq!(with(|a| a.id = "p1".into()), "attachments[1].id");
        assert_eq!(
            with(|a| a.sha256 = "AB".repeat(32)),
            "attachments[1].sha256"
        );
        assert_eq!(with(|a| a.sha256 = "ab".into()), "attachments[1].sha256");
        assert_eq!(with(|a| a.size_bytes = 0), "attachments[1].size_bytes");
        assert_eq!(
            with(|a| a.size_bytes = MAX_ATTACHMENT_BYTES + 1),
            "attachments[1].size_bytes"
        );
        assert_eq!(
            with(|a| a.content_type = "jpeg".into()),
            "attachments[1].content_type"
        );
        assert_eq!(
            with(|a| a.content_type = "image/jpeg; q=1".into()),
            "attachments[1].content_type"
        );
        assert_eq!(
            with(|a| a.caption = "a\u{0}".into()),
            "attachments[1].caption"
        );
        assert_eq!(
            with(|a| a.caption = "长".repeat(201)),
            "attachments[1].caption"
        );
        let many = (0..=MAX_ATTACHMENTS)
            .map(|i| photo(&format!("p{i}")))
            .collect();
        assert_eq!(
            field_of(Attachments::parse("attachments", many)),
            "attachments"
        );
    }

    #[test]
    fn states_are_known_and_unique() {
        let accepted = pb::CaseState::Accepted as i32;
        assert_eq!(
            states("states", &[accepted, accepted]).unwrap(),
            vec![pb::CaseState::Accepted]
        );
        assert_eq!(field_of(states("states", &[accepted, 0])), "states[1]");
        assert_eq!(field_of(states("states", &[99])), "states[0]");
    }

    #[test]
    fn prefixes_are_kept_inside_the_scope() {
        let scope: Scope = "350205002".parse().unwrap();
        assert_eq!(prefix_in_scope(&scope, "f", "").unwrap(), "350205002");
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205002006").unwrap(),
            "350205002006"
        );
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205002006001").unwrap(),
            "350205002006001"
        );
        assert_eq!(
            prefix_in_scope(&scope, "f", "350205000000").unwrap(),
            "350205002"
        );
        assert!(prefix_in_scope(&scope, "f", "350203001000").is_err());
        assert!(prefix_in_scope(&scope, "f", "abc").is_err());
        let codes = vec!["350205002006".to_owned(), "abc".to_owned()];
        assert_eq!(
            field_of(prefixes_in_scope(&scope, "org_codes", &codes)),
            "org_codes[1]"
        );
    }
}

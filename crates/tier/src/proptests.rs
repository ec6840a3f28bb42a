//! Property tests of every request parser (`request`) and field check (`validate`): arbitrary
//! input, control characters, zero-width text, huge values and arbitrary timestamps never panic,
//! and whatever is accepted holds the invariants the handlers rely on.

use chrono::Utc;
use proptest::prelude::*;
use wangge_domain::Scope;
use wangge_proto as pb;

use crate::admin::{MAX_CLOCK_STEP_SECONDS, clock_step};
use crate::error::Error;
use crate::evaluation::{Evaluate, MAX_AHEAD_SECONDS, MAX_PERIOD_DAYS};
use crate::reconcile::{
    CASES_PER_ASK, differing_days, events_of, marks_asked, parse_marks, window,
};
use crate::replicate::{Failure, fetched_event};
use crate::request::{
    CaseAction, CaseListing, CheckResult, Decision, DelayAsk, DepartmentAction, Dispatch, MAX_PAGE,
    Merge, NewReport, NoteKind, Supervision, VerificationAnswer,
};
use crate::validate::{self, *};

/// Characters that break things: NUL and other controls, line breaks, zero-width and invisible
/// characters, a surrogate-range neighbour, right-to-left override, CJK, emoji.
const NASTY: &[char] = &[
    '\0',
    '\u{1}',
    '\u{7}',
    '\u{1b}',
    '\t',
    '\n',
    '\r',
    '\u{7f}',
    '\u{85}',
    '\u{9f}',
    ' ',
    '\u{a0}',
    '\u{ad}',
    '\u{200b}',
    '\u{200c}',
    '\u{200d}',
    '\u{200e}',
    '\u{2028}',
    '\u{2029}',
    '\u{202e}',
    '\u{2060}',
    '\u{3000}',
    '\u{3164}',
    '\u{fe0f}',
    '\u{feff}',
    '\u{fffd}',
    '\u{e0001}',
    'a',
    'Z',
    '0',
    '-',
    '_',
    '.',
    '/',
    ';',
    '路',
    '灯',
    '👨',
];

/// Arbitrary text, biased towards what should be refused or trimmed, sometimes very long.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(prop::sample::select(NASTY), 0..40)
            .prop_map(|chars| chars.into_iter().collect::<String>()),
        2 => any::<String>(),
        2 => "[A-Za-z0-9_.-]{0,70}",
        1 => (1_990usize..2_100, prop::sample::select(NASTY))
            .prop_map(|(n, c)| format!("x{}x", c.to_string().repeat(n))),
    ]
}

/// An id or code: mostly plausible, sometimes arbitrary.
fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[A-Za-z0-9_-]{1,64}",
        1 => "[0-9]{0,16}",
        2 => text(),
    ]
}

fn case_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
        1 => text(),
    ]
}

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => -200.0..200.0f64,
        1 => any::<f64>(),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 180.0, 90.0]),
    ]
}

fn location() -> impl Strategy<Value = Option<pb::GeoPoint>> {
    prop::option::weighted(
        0.9,
        (float(), float()).prop_map(|(longitude, latitude)| pb::GeoPoint {
            longitude,
            latitude,
        }),
    )
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    let seconds = prop_oneof![
        2 => (now - 86_400 * 365)..(now + 600),
        1 => (EARLIEST_SECONDS - 10)..(EARLIEST_SECONDS + 10),
        1 => any::<i64>(),
    ];
    let nanos = prop_oneof![3 => 0..1_000_000_000i32, 1 => any::<i32>()];
    prop::option::of(
        (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

/// A bound of an evaluated period: near now, up to a year or more ahead, near 2000, or anything.
fn period_bound() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    let now = Utc::now().timestamp();
    let year = MAX_PERIOD_DAYS * 86_400;
    prop_oneof![
        3 => timestamp(),
        1 => prop::option::of(
            ((now + year - 10)..(now + year + 10), 0..1_000_000_000i32)
                .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
        ),
    ]
}

fn attachment() -> impl Strategy<Value = pb::Attachment> {
    let content_type = prop_oneof![
        3 => prop::sample::select(vec!["image/jpeg", "video/mp4", "IMAGE/PNG", "application/vnd.ms-excel"])
            .prop_map(str::to_owned),
        2 => text(),
    ];
    let sha256 = prop_oneof![3 => "[0-9a-f]{64}", 1 => "[0-9A-Fa-f]{60,66}", 1 => text()];
    let size = prop_oneof![3 => 1..=MAX_ATTACHMENT_BYTES, 1 => any::<u64>()];
    (id(), content_type, size, sha256, text()).prop_map(
        |(id, content_type, size_bytes, sha256, caption)| pb::Attachment {
            id,
            content_type,
            size_bytes,
            sha256,
            caption,
        },
    )
}

fn attachments() -> impl Strategy<Value = Vec<pb::Attachment>> {
    prop_oneof![
        4 => prop::collection::vec(attachment(), 0..3),
        1 => prop::collection::vec(attachment(), 0..25),
    ]
}

/// Mostly `plausible`, sometimes `arbitrary`: a request with one or two bad fields among good ones.
fn mostly<T: std::fmt::Debug>(
    plausible: impl Strategy<Value = T> + 'static,
    arbitrary: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<T> {
    prop_oneof![8 => plausible, 1 => arbitrary].boxed()
}

fn report_from(
    ids: (BoxedStrategy<String>, BoxedStrategy<String>),
    description: BoxedStrategy<String>,
    location: BoxedStrategy<Option<pb::GeoPoint>>,
    captured_at: BoxedStrategy<Option<prost_types::Timestamp>>,
    urgency: BoxedStrategy<i32>,
    attachments: BoxedStrategy<Vec<pb::Attachment>>,
    resolution: BoxedStrategy<Option<String>>,
) -> impl Strategy<Value = pb::ReportCaseRequest> {
    (
        ids,
        description,
        location,
        (captured_at, urgency, attachments, resolution),
    )
        .prop_map(
            |(
                (client_id, category_code),
                description,
                location,
                (captured_at, urgency, attachments, resolution),
            )| {
                pb::ReportCaseRequest {
                    client_id,
                    category_code,
                    description,
                    location,
                    captured_at,
                    urgency,
                    attachments,
                    self_handling: resolution.map(|resolution| pb::SelfHandling { resolution }),
                }
            },
        )
}

/// Arbitrary reports, half of them plausible with the odd bad field, half anything at all.
fn report() -> impl Strategy<Value = pb::ReportCaseRequest> {
    let now = Utc::now().timestamp();
    let plausible_attachment = ("[a-z0-9]{1,10}", "[0-9a-f]{64}", 1..=MAX_ATTACHMENT_BYTES)
        .prop_map(|(id, sha256, size_bytes)| pb::Attachment {
            id,
            content_type: "image/jpeg".into(),
            size_bytes,
            sha256,
            caption: "现场".into(),
        });
    let plausible = report_from(
        (
            mostly("[A-Za-z0-9_-]{1,64}", id()),
            mostly(Just("szcg-01-01".to_owned()), id()),
        ),
        mostly("[a-z路灯 ]{1,30}[a-z]", text()),
        mostly(
            (117.0..119.0f64, 24.0..25.0f64).prop_map(|(longitude, latitude)| {
                Some(pb::GeoPoint {
                    longitude,
                    latitude,
                })
            }),
            location(),
        ),
        mostly(
            prop::option::of(
                ((now - 86_400)..now, 0..1_000_000_000i32)
                    .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
            ),
            timestamp(),
        ),
        mostly(0..4i32, any::<i32>()),
        mostly(
            prop::collection::vec(plausible_attachment, 0..3),
            attachments(),
        ),
        mostly(prop::option::of("[a-z]{1,20}"), prop::option::of(text())),
    );
    let arbitrary = report_from(
        (id().boxed(), id().boxed()),
        text().boxed(),
        location().boxed(),
        timestamp().boxed(),
        any::<i32>().boxed(),
        attachments().boxed(),
        prop::option::of(text()).boxed(),
    );
    prop_oneof![plausible, arbitrary]
}

fn states() -> impl Strategy<Value = Vec<i32>> {
    prop::collection::vec(prop_oneof![3 => 0..20i32, 1 => any::<i32>()], 0..30)
}

fn scope() -> Scope {
    "350205002".parse().expect("a valid scope")
}

/// What every accepted text holds: trimmed, no refused character, not longer than allowed.
fn assert_clean(text: &str, max_chars: usize, multi_line: bool) {
    assert!(text.chars().count() <= max_chars, "{text:?} too long");
    for c in text.chars() {
        let allowed = multi_line && matches!(c, '\n' | '\t');
        assert!(!c.is_control() || allowed, "{text:?} holds {c:?}");
        if !multi_line {
            assert!(
                !matches!(c, '\u{2028}' | '\u{2029}'),
                "{text:?} holds {c:?}"
            );
        }
    }
    assert!(
        !text.starts_with(is_invisible) && !text.ends_with(is_invisible),
        "{text:?} untrimmed"
    );
}

fn assert_required(text: &str, max_chars: usize, multi_line: bool) {
    assert_clean(text, max_chars, multi_line);
    assert!(!text.is_empty());
}

fn assert_id(id: &str, max: usize, extra: &[u8]) {
    assert!(!id.is_empty() && id.len() <= max, "{id:?}");
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b) || extra.contains(&b)),
        "{id:?}"
    );
}

fn assert_attachments(attachments: &[pb::Attachment]) {
    assert!(attachments.len() <= MAX_ATTACHMENTS);
    for (i, a) in attachments.iter().enumerate() {
        assert_id(&a.id, MAX_ID_CHARS, b"");
        assert!(attachments[..i].iter().all(|b| b.id != a.id), "id twice");
        let (kind, subtype) = a.content_type.split_once('/').expect("type/subtype");
        assert!(!kind.is_empty() && !subtype.is_empty());
        assert!(a.content_type.len() <= MAX_CONTENT_TYPE_CHARS);
        assert_eq!(a.content_type, a.content_type.to_ascii_lowercase());
        assert!((1..=MAX_ATTACHMENT_BYTES).contains(&a.size_bytes));
        assert!(
            a.sha256.len() == 64
                && a.sha256
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
        assert_clean(&a.caption, MAX_CAPTION_CHARS, false);
    }
}

/// A refusal is an INVALID_ARGUMENT naming a field, never anything else; its message (what the
/// client reads) starts with that field.
fn assert_refusal<T>(result: &Result<T, Error>) {
    if let Err(error) = result {
        assert!(
            matches!(error, Error::InvalidArgument { field, .. }
                if !field.is_empty() && error.to_string().starts_with(&format!("{field}: "))),
            "{error:?}"
        );
    }
}

/// Like [`assert_refusal`], and the field named is one of the request's `fields` (an element of a
/// list field, `attachments[3].sha256`, counts as the list).
fn assert_refused_by<T>(result: &Result<T, Error>, fields: &[&str]) {
    assert_refusal(result);
    if let Err(Error::InvalidArgument { field, .. }) = result {
        let list = field.split('[').next().unwrap_or_default();
        assert!(
            fields.contains(&field.as_ref()) || (field.contains('[') && fields.contains(&list)),
            "{field:?} is not a field of the request ({fields:?})"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_report_parses_into_a_clean_one_or_is_refused_by_field(request in report()) {
        let now = Utc::now();
        let parsed = NewReport::parse(request.clone(), now);
        assert_refusal(&parsed);
        if let Ok(report) = parsed {
            assert_id(report.client_id(), MAX_ID_CHARS, b"");
            assert_id(report.category_code(), MAX_CODE_CHARS, b".");
            assert_required(report.description(), MAX_DESCRIPTION_CHARS, true);
            let point = report.location;
            prop_assert!(point.longitude.abs() <= 180.0 && point.latitude.abs() <= 90.0);
            if let Some(at) = report.captured_at {
                prop_assert!((0..1_000_000_000).contains(&at.nanos));
                prop_assert!(at.seconds >= EARLIEST_SECONDS);
                prop_assert!(at.seconds <= now.timestamp() + MAX_CLOCK_AHEAD_SECONDS);
            }
            prop_assert_ne!(report.urgency(), pb::Urgency::Unspecified);
            assert_attachments(report.attachments());
            if let Some(handling) = report.self_handling() {
                assert_required(&handling.resolution, MAX_NOTE_CHARS, true);
            }
            // The same request always gives the same digest.
            let again = NewReport::parse(request, now).expect("parsed once");
            prop_assert_eq!(report.digest(), again.digest());
        }
    }

    #[test]
    fn any_case_action_parses_into_a_clean_one_or_is_refused_by_field(
        case_id in case_id(),
        note in text(),
        attachments in attachments(),
        reason in any::<bool>(),
        passed in any::<bool>(),
    ) {
        let kind = if reason { NoteKind::Reason } else { NoteKind::Remark };
        let request = pb::CaseActionRequest {
            case_id: case_id.clone(),
            note: note.clone(),
            attachments: attachments.clone(),
        };
        let check = |result: Result<CaseAction, Error>, kind: NoteKind| {
            assert_refusal(&result);
            if let Ok(action) = result {
                assert_clean(action.note.as_str(), MAX_NOTE_CHARS, true);
                if kind == NoteKind::Reason {
                    assert!(!action.note.as_str().is_empty());
                }
                assert_attachments(action.attachments.as_slice());
            }
        };
        check(CaseAction::console(request, kind), kind);
        let review = pb::ReviewRequest { case_id: case_id.clone(), note: note.clone() };
        check(CaseAction::review(review, kind), kind);
        let confirm = pb::ConfirmCheckRequest {
            case_id: case_id.clone(),
            passed,
            note: note.clone(),
            attachments: attachments.clone(),
        };
        check(CheckResult::try_from(confirm).map(|c| c.action), NoteKind::Remark);
    }

    #[test]
    fn any_department_step_or_dispatch_parses_or_is_refused_by_field(
        case_id in case_id(),
        department_code in id(),
        note in text(),
        attachments in attachments(),
        reason in any::<bool>(),
    ) {
        let kind = if reason { NoteKind::Reason } else { NoteKind::Remark };
        let request = pb::DepartmentActionRequest {
            case_id: case_id.clone(),
            department_code: department_code.clone(),
            note: note.clone(),
            attachments,
        };
        let parsed = DepartmentAction::parse(request, kind);
        assert_refusal(&parsed);
        if let Ok(step) = parsed {
            assert_id(&step.department_code, MAX_CODE_CHARS, b".");
            assert_clean(step.action.note.as_str(), MAX_NOTE_CHARS, true);
            assert_attachments(step.action.attachments.as_slice());
        }
        let dispatch = Dispatch::try_from(pb::DispatchCaseRequest { case_id, department_code, note });
        assert_refusal(&dispatch);
        if let Ok(dispatch) = dispatch {
            assert_id(&dispatch.department_code, MAX_CODE_CHARS, b".");
            assert_clean(dispatch.note.as_str(), MAX_NOTE_CHARS, true);
        }
    }

    #[test]
    fn any_listing_stays_in_scope_with_a_bounded_page(
        states in states(),
        org_code in prop_oneof![2 => "35020[0-9]{0,10}", 1 => text()],
        owned_only in any::<bool>(),
        page_size in any::<u32>(),
        page_token in case_id(),
    ) {
        let request = pb::ListCasesRequest { states, org_code, owned_only, page_size, page_token };
        let parsed = CaseListing::parse(request, &scope());
        assert_refusal(&parsed);
        if let Ok(listing) = parsed {
            prop_assert!(listing.prefix.starts_with(scope().prefix()));
            prop_assert!((1..=MAX_PAGE).contains(&listing.page_size));
            prop_assert!(!listing.states.contains(&pb::CaseState::Unspecified));
            prop_assert!(listing.states.len() <= 19);
        }
    }

    #[test]
    fn registry_and_watch_fields_parse_or_are_refused_by_field(
        code in prop_oneof![2 => "[0-9]{10,16}", 1 => text()],
        codes in prop::collection::vec(prop_oneof![2 => "35020[0-9]{0,10}", 1 => text()], 0..120),
        scheme in id(),
        point in location(),
        states in states(),
    ) {
        let org = validate::org_code("code", &code);
        assert_refusal(&org);
        if let Ok(org) = org {
            prop_assert_eq!(org.as_str().len(), 12);
        }
        let prefixes = prefixes_in_scope(&scope(), "org_codes", &codes);
        assert_refusal(&prefixes);
        if let Ok(prefixes) = prefixes {
            prop_assert!(!prefixes.is_empty() && prefixes.len() <= MAX_LISTED_CODES);
            prop_assert!(prefixes.iter().all(|p| p.starts_with(scope().prefix())));
        }
        let scheme = optional_code("scheme", &scheme);
        assert_refusal(&scheme);
        if let Ok(Some(scheme)) = scheme {
            assert_id(&scheme, MAX_CODE_CHARS, b".");
        }
        let point = validate::location("location", point);
        assert_refusal(&point);
        if let Ok(point) = point {
            prop_assert!(point.longitude.is_finite() && point.latitude.is_finite());
        }
        let parsed = validate::states("states", &states);
        assert_refusal(&parsed);
    }

    #[test]
    fn text_checks_never_panic_and_keep_their_promises(value in text(), max in 0usize..3000) {
        for (result, multi_line, needed) in [
            (optional_line("f", &value, max), false, false),
            (free_text("f", &value, max), true, true),
            (optional_free_text("f", &value, max), true, false),
        ] {
            assert_refusal(&result);
            if let Ok(text) = result {
                assert_clean(&text, max, multi_line);
                prop_assert!(!needed || !text.is_empty());
            }
        }
        // At most 40 characters, each escaped to at most 10, the quotes and an ellipsis.
        let quoted = quote(&value);
        prop_assert!(quoted.chars().count() <= 40 * 10 + 3);
    }

    #[test]
    fn any_decision_merge_supervision_or_verification_parses_or_is_refused_by_field(
        case_id in case_id(),
        into_case_id in prop_oneof![3 => case_id(), 1 => Just(String::new())],
        note in text(),
        attachments in attachments(),
        flag in any::<bool>(),
        level in prop_oneof![3 => 0..6i32, 1 => any::<i32>()],
        same in prop::bool::weighted(0.1),
    ) {
        let decision = Decision::try_from(pb::DecisionRequest {
            case_id: case_id.clone(),
            approve: flag,
            note: note.clone(),
        });
        assert_refused_by(&decision, &["case_id", "note"]);
        if let Ok(decision) = decision {
            prop_assert_eq!(decision.approve, flag);
            assert_clean(decision.action.note.as_str(), MAX_NOTE_CHARS, true);
            // A denial always carries its reason.
            prop_assert!(flag || !decision.action.note.as_str().is_empty());
            prop_assert!(decision.action.attachments.as_slice().is_empty());
        }

        // Sometimes a case merged into itself, written differently.
        let into_case_id = if same { format!(" {} ", case_id.to_uppercase()) } else { into_case_id };
        let merge = Merge::try_from(pb::MergeCaseRequest {
            case_id: case_id.clone(),
            into_case_id: into_case_id.clone(),
            note: note.clone(),
        });
        assert_refused_by(&merge, &["case_id", "into_case_id", "note"]);
        if let Ok(merge) = merge {
            prop_assert_ne!(merge.into, merge.action.case_id);
            prop_assert_eq!(merge.into, uuid::Uuid::parse_str(into_case_id.trim()).expect("parsed once"));
            assert_clean(merge.action.note.as_str(), MAX_NOTE_CHARS, true);
        }

        let supervision = Supervision::try_from(pb::SuperviseCaseRequest {
            case_id: case_id.clone(),
            level,
            note: note.clone(),
        });
        assert_refused_by(&supervision, &["case_id", "level", "note"]);
        if let Ok(supervision) = supervision {
            prop_assert!(matches!(
                supervision.level,
                pb::SupervisionLevel::Normal | pb::SupervisionLevel::Yellow | pb::SupervisionLevel::Red
            ));
            prop_assert_eq!(supervision.level as i32, level);
            assert_required(supervision.action.note.as_str(), MAX_NOTE_CHARS, true);
        }

        let answer = VerificationAnswer::try_from(pb::ConfirmVerificationRequest {
            case_id,
            genuine: flag,
            note,
            attachments,
        });
        assert_refused_by(&answer, &["case_id", "note", "attachments"]);
        if let Ok(answer) = answer {
            prop_assert_eq!(answer.genuine, flag);
            assert_clean(answer.action.note.as_str(), MAX_NOTE_CHARS, true);
            assert_attachments(answer.action.attachments.as_slice());
        }
    }

    #[test]
    fn any_delay_request_parses_into_a_bounded_extension_or_is_refused_by_field(
        case_id in case_id(),
        department_code in mostly("[a-z]{2,8}-[0-9]{2}", id()),
        reason in mostly("[a-z路灯 ]{1,30}[a-z]", text()),
        extension in prop::option::weighted(0.9, (
            prop_oneof![3 => 0..12_000u32, 1 => any::<u32>()],
            prop_oneof![3 => 0..5i32, 1 => any::<i32>()],
        )),
    ) {
        let request = pb::DelayRequest {
            case_id,
            department_code,
            extension: extension.map(|(amount, unit)| pb::TimeLimit { amount, unit }),
            reason,
        };
        let parsed = DelayAsk::try_from(request);
        assert_refused_by(
            &parsed,
            &["case_id", "department_code", "extension", "extension.amount", "extension.unit", "reason"],
        );
        if let Ok(ask) = parsed {
            prop_assert!((1..=10_000).contains(&ask.extension.amount));
            prop_assert!(matches!(
                pb::TimeUnit::try_from(ask.extension.unit),
                Ok(pb::TimeUnit::Minutes
                    | pb::TimeUnit::WorkingMinutes
                    | pb::TimeUnit::WorkingHours
                    | pb::TimeUnit::WorkingDays)
            ));
            assert_id(&ask.action.department_code, MAX_CODE_CHARS, b".");
            // The reason is the note of the step, and a delay needs one.
            assert_required(ask.action.action.note.as_str(), MAX_NOTE_CHARS, true);
        }
    }

    #[test]
    fn any_evaluation_asks_for_a_plausible_period_in_scope_or_is_refused_by_field(
        org_code in prop_oneof![
            2 => "350205002[0-9]{0,6}",
            1 => "35020[0-9]{0,10}",
            1 => Just(String::new()),
            1 => text(),
        ],
        from in period_bound(),
        to in period_bound(),
        plausible in prop::bool::weighted(0.5),
        back in 0..(MAX_PERIOD_DAYS * 86_400),
        span in 0..(MAX_PERIOD_DAYS * 86_400 + 86_400),
    ) {
        let now = Utc::now();
        // Half of the periods are built near a plausible one (from up to a year back, a span up
        // to a day over the longest), so that many parse and the bounds are met at their edges.
        let (from, to) = if plausible {
            let from = now.timestamp() - back;
            let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
            (at(from), at(from + span))
        } else {
            (from, to)
        };
        let parsed = Evaluate::parse(pb::EvaluateRequest { org_code, from, to }, &scope(), now);
        assert_refused_by(&parsed, &["org_code", "from", "to"]);
        if let Ok(ask) = parsed {
            prop_assert!(ask.prefix.starts_with(scope().prefix()));
            prop_assert!(ask.from.timestamp() >= EARLIEST_SECONDS);
            prop_assert!(ask.from < ask.to && ask.from < now && ask.to <= now);
            prop_assert!(ask.to - ask.from <= chrono::Duration::days(MAX_PERIOD_DAYS));
            let asked_to = to.expect("parsed").seconds;
            prop_assert!(asked_to <= now.timestamp() + MAX_AHEAD_SECONDS);
        }
    }

    #[test]
    fn any_clock_step_is_between_a_second_and_400_days_or_is_refused_by_field(
        seconds in prop_oneof![
            2 => -10..(MAX_CLOCK_STEP_SECONDS + 10),
            1 => (MAX_CLOCK_STEP_SECONDS - 3)..(MAX_CLOCK_STEP_SECONDS + 3),
            1 => any::<i64>(),
        ],
    ) {
        let parsed = clock_step(&pb::AdvanceClockRequest { seconds });
        assert_refused_by(&parsed, &["seconds"]);
        prop_assert_eq!(parsed.is_ok(), (1..=MAX_CLOCK_STEP_SECONDS).contains(&seconds));
        if let Ok(step) = parsed {
            prop_assert_eq!(step.num_seconds(), seconds);
        }
    }

    #[test]
    fn any_reconciliation_request_or_answer_is_read_whole_or_refused(
        community_code in "[0-9]{12}",
        since in timestamp(),
        until in timestamp(),
        day in prop_oneof![2 => "20[0-9]{2}-[01][0-9]-[0-3][0-9]", 1 => text()],
        case_ids in prop_oneof![
            4 => prop::collection::vec(case_id(), 0..20),
            1 => prop::collection::vec(case_id(), 495..510),
        ],
        after in prop_oneof![2 => Just(String::new()), 2 => case_id()],
        marks in prop::collection::vec((case_id(), any::<u64>()), 0..20),
        days in prop::collection::vec(
            (prop_oneof![3 => "20[0-9]{2}-[01][0-9]-[0-3][0-9]", 1 => text()], any::<u64>(),
             prop::collection::vec(any::<u8>(), 0..4)),
            0..10,
        ),
        body in prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..300),
            2 => (case_id(), case_id(), any::<u64>()).prop_map(|(event_id, case_id, seq)| {
                prost::Message::encode_to_vec(&pb::CaseEvent { event_id, case_id, seq, ..Default::default() })
            }),
        ],
    ) {
        // Requests a peer sends: the window, the marks asked, the case whose events are asked.
        let digest = pb::DigestRequest { community_code: community_code.clone(), since, until };
        if let Ok((from, to)) = window(&digest) {
            prop_assert_eq!(from.timestamp(), since.expect("read").seconds);
            prop_assert_eq!(to.timestamp(), until.expect("read").seconds);
        }
        let request = pb::MarksRequest {
            community_code: community_code.clone(),
            day: day.clone(),
            until,
            case_ids: case_ids.clone(),
            after_case_id: after.clone(),
        };
        if let Ok((which, after_id)) = marks_asked(&community_code, &request) {
            prop_assert_eq!(after_id.is_some(), !after.is_empty());
            match which {
                wangge_store::sync::Marks::Day { prefix, .. } => {
                    prop_assert!(case_ids.is_empty());
                    prop_assert_eq!(prefix, community_code.clone());
                }
                wangge_store::sync::Marks::Cases { prefix, ids } => {
                    prop_assert!(!case_ids.is_empty());
                    prop_assert_eq!(prefix, community_code.clone());
                    let valid = case_ids.iter().take(CASES_PER_ASK)
                        .filter(|id| uuid::Uuid::parse_str(id).is_ok()).count();
                    prop_assert_eq!(ids.len(), valid);
                }
            }
        }
        let events = events_of(&pb::EventsRequest { case_id: after.clone(), after_seq: 0 });
        prop_assert_eq!(events.is_ok(), uuid::Uuid::parse_str(&after).is_ok());

        // Answers a peer sends: marks with junk ids are left out, days that are no date too.
        let wire: Vec<pb::CaseMark> = marks
            .iter()
            .map(|(case_id, version)| pb::CaseMark { case_id: case_id.clone(), version: *version })
            .collect();
        let parsed = parse_marks(&wire);
        prop_assert_eq!(
            parsed.len(),
            marks.iter().filter(|(id, _)| uuid::Uuid::parse_str(id).is_ok()).count()
        );
        let theirs: Vec<pb::DayDigest> = days
            .iter()
            .map(|(day, cases, hash)| pb::DayDigest { day: day.clone(), cases: *cases, hash: hash.clone() })
            .collect();
        let differing = differing_days(&[], &theirs);
        prop_assert!(differing.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(differing.len() <= theirs.len());

        // A fetched event is taken whole with both ids, or refused as the message's fault (so the
        // answer is dropped before anything is written, never retried as if the database failed).
        match fetched_event(&body) {
            Ok((event, event_id, case_id)) => {
                prop_assert_eq!(event_id, uuid::Uuid::parse_str(&event.event_id).expect("parsed"));
                prop_assert_eq!(case_id, uuid::Uuid::parse_str(&event.case_id).expect("parsed"));
            }
            Err(Failure::Message(_)) => {}
            Err(other) => prop_assert!(false, "{other}"),
        }
    }
}

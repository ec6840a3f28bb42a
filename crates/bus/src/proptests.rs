//! Property tests of the decoders of what arrives on core NATS: receipts, and reconciliation
//! requests and answers. Arbitrary bytes, valid messages with bytes flipped, cut or added, and
//! arbitrary subjects never panic; what is not a well-formed message is a typed error.

use async_nats::HeaderMap;
use proptest::prelude::*;
use prost::Message as _;
use uuid::Uuid;
use wangge_domain::OrgCode;
use wangge_proto as pb;
use wangge_proto::Tier;

use crate::receipt_subject;
use crate::receipts::{self, NotAReceipt};
use crate::sync::{Ask, BadRequest, Op, SyncError, answer_of, request_of, sync_subject};

/// `valid` damaged: some bytes overwritten, then cut short or lengthened, or left alone.
fn damaged(valid: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = valid.len();
    (
        prop::collection::vec((0..len.max(1), any::<u8>()), 0..3),
        prop_oneof![3 => Just(None), 1 => (0..=len).prop_map(Some)],
        prop_oneof![3 => Just(Vec::new()), 1 => prop::collection::vec(any::<u8>(), 1..8)],
    )
        .prop_map(move |(flips, cut, tail)| {
            let mut bytes = valid.clone();
            for (at, byte) in flips {
                if let Some(b) = bytes.get_mut(at) {
                    *b = byte;
                }
            }
            if let Some(cut) = cut {
                bytes.truncate(cut);
            }
            bytes.extend(tail);
            bytes
        })
}

/// An event id on the wire: mostly a UUID, sometimes anything.
fn wire_id() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => any::<String>(),
        1 => Just(String::new()),
    ]
}

fn receipt() -> impl Strategy<Value = pb::Envelope> {
    (
        prop_oneof![3 => 0..5i32, 1 => any::<i32>()],
        // Mostly a scope holding the test community (or none), sometimes any digits.
        prop_oneof![
            2 => prop::sample::select(vec!["", "350205", "350205002", COMMUNITY]).prop_map(String::from),
            1 => "[0-9]{0,15}",
        ],
        prop::collection::vec(wire_id(), 0..20),
        any::<String>(),
    )
        .prop_map(|(tier, org_prefix, event_ids, event_id)| pb::Envelope {
            event_id,
            trace: Default::default(),
            body: Some(pb::envelope::Body::Receipt(pb::Receipt {
                tier,
                org_prefix,
                event_ids,
            })),
        })
}

/// A subject token: the right shape, or anything that may stand between two dots.
fn token(shape: &'static str) -> BoxedStrategy<String> {
    prop_oneof![12 => shape.prop_map(|s: String| s), 1 => "[^.]{0,8}"].boxed()
}

fn subject() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => (
            token("(village|street|district)"),
            token("[0-9]{6}"),
            token("[0-9]{3}"),
            token("[0-9]{3}"),
            token("(digest|marks|events)"),
        )
            .prop_map(|(tier, district, street, community, op)| {
                format!("wg.sync.{tier}.{district}.{street}.{community}.{op}")
            }),
        1 => any::<String>(),
        1 => "wg\\.sync(\\.[a-z0-9]{0,6}){0,9}",
    ]
}

fn timestamp() -> impl Strategy<Value = Option<prost_types::Timestamp>> {
    prop::option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    )
}

fn request_payload() -> impl Strategy<Value = Vec<u8>> {
    let digest =
        ("[0-9]{12}", timestamp(), timestamp()).prop_map(|(community_code, since, until)| {
            pb::DigestRequest {
                community_code,
                since,
                until,
            }
            .encode_to_vec()
        });
    let marks = (
        "[0-9]{12}",
        any::<String>(),
        timestamp(),
        prop::collection::vec(wire_id(), 0..5),
        wire_id(),
    )
        .prop_map(|(community_code, day, until, case_ids, after_case_id)| {
            pb::MarksRequest {
                community_code,
                day,
                until,
                case_ids,
                after_case_id,
            }
            .encode_to_vec()
        });
    let events = (wire_id(), any::<u64>())
        .prop_map(|(case_id, after_seq)| pb::EventsRequest { case_id, after_seq }.encode_to_vec());
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        2 => digest.prop_flat_map(damaged),
        2 => marks.prop_flat_map(damaged),
        2 => events.prop_flat_map(damaged),
    ]
}

fn reply_payload() -> impl Strategy<Value = Vec<u8>> {
    let days = prop::collection::vec(
        (
            any::<String>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..16),
        )
            .prop_map(|(day, cases, hash)| pb::DayDigest { day, cases, hash }),
        0..5,
    )
    .prop_map(|days| pb::DigestReply { days }.encode_to_vec());
    let marks = (
        prop::collection::vec(
            (wire_id(), any::<u64>())
                .prop_map(|(case_id, version)| pb::CaseMark { case_id, version }),
            0..5,
        ),
        any::<bool>(),
    )
        .prop_map(|(marks, more)| pb::MarksReply { marks, more }.encode_to_vec());
    let events = (
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..4),
        any::<bool>(),
    )
        .prop_map(|(events, more)| pb::EventsReply { events, more }.encode_to_vec());
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => days.prop_flat_map(damaged),
        1 => marks.prop_flat_map(damaged),
        1 => events.prop_flat_map(damaged),
    ]
}

/// The community the receipts' subjects name.
const COMMUNITY: &str = "350205002006";

/// The subject a receipt for the test community takes when `receiver` (1 to 3) confirms.
fn receipt_subject_of(receiver: i32) -> (String, Tier) {
    let receiver = Tier::try_from(receiver).unwrap_or(Tier::District);
    let community: OrgCode = COMMUNITY.parse().expect("a community code");
    (
        receipt_subject(Tier::Village, &community, receiver),
        receiver,
    )
}

/// The ids a receipt names that are event ids (UUIDs), in order.
fn uuids(ids: &[String]) -> Vec<Uuid> {
    ids.iter()
        .filter_map(|id| Uuid::parse_str(id).ok())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn a_receipt_decodes_whole_and_anything_else_is_a_typed_refusal(
        envelope in receipt(),
        noise in prop::collection::vec(any::<u8>(), 0..512),
        pick in 0..3u8,
        receiver in 1..4i32,
    ) {
        let valid = envelope.encode_to_vec();
        let payload = match pick {
            0 => valid.clone(),
            1 => noise,
            _ => {
                // Another body in the envelope: a case event is no receipt.
                pb::Envelope {
                    body: Some(pb::envelope::Body::CaseEvent(pb::CaseEvent::default())),
                    ..envelope.clone()
                }
                .encode_to_vec()
            }
        };
        let (subject, receiver) = receipt_subject_of(receiver);
        let decoded = receipts::decode(&subject, &payload);
        let Some(pb::envelope::Body::Receipt(sent)) = &envelope.body else {
            unreachable!("built with a receipt");
        };
        // The subject's tier and community are the truth; the payload must agree with them.
        let agrees = sent.tier == receiver as i32 && COMMUNITY.starts_with(&sent.org_prefix);
        match (pick, decoded) {
            (0, Ok(receipt)) => {
                prop_assert!(agrees);
                prop_assert_eq!(receipt.tier, receiver);
                prop_assert_eq!(receipt.community.as_str(), COMMUNITY);
                prop_assert_eq!(receipt.event_ids, uuids(&sent.event_ids));
            }
            (0, Err(NotAReceipt::Forged(_))) => prop_assert!(!agrees),
            (0, Err(other)) => prop_assert!(false, "a well-formed receipt refused: {other}"),
            (2, result) => prop_assert!(matches!(result, Err(NotAReceipt::OtherBody)), "{result:?}"),
            (_, Ok(receipt)) => prop_assert_eq!(receipt.tier, receiver),
            (_, Err(_)) => {}
        }
    }

    #[test]
    fn a_damaged_receipt_never_panics_and_confirms_only_as_its_subject_says(
        payload in receipt().prop_flat_map(|e| damaged(e.encode_to_vec())),
        receiver in 1..4i32,
        subject in prop_oneof![3 => Just(None), 1 => any::<String>().prop_map(Some)],
    ) {
        let (good, tier) = receipt_subject_of(receiver);
        let subject = subject.unwrap_or(good.clone());
        match receipts::decode(&subject, &payload) {
            Ok(receipt) => {
                prop_assert_eq!(&subject, &good);
                prop_assert_eq!(receipt.tier, tier);
            }
            Err(NotAReceipt::Subject) => prop_assert_ne!(&subject, &good),
            Err(_) => {}
        }
    }

    #[test]
    fn any_sync_request_is_read_or_refused_with_a_typed_reason(
        subject in subject(),
        payload in request_payload(),
    ) {
        match request_of(&subject, &payload) {
            Ok((community, ask)) => {
                // What was read is what the subject and the payload say.
                let tokens: Vec<&str> = subject.split('.').collect();
                prop_assert_eq!(tokens.len(), 7);
                prop_assert_eq!(community.as_str(), tokens[3..6].concat());
                let again = match (&ask, tokens[6]) {
                    (Ask::Digest(_), "digest") => Ask::Digest(pb::DigestRequest::decode(&payload[..]).unwrap()),
                    (Ask::Marks(_), "marks") => Ask::Marks(pb::MarksRequest::decode(&payload[..]).unwrap()),
                    (Ask::Events(_), "events") => Ask::Events(pb::EventsRequest::decode(&payload[..]).unwrap()),
                    (ask, op) => panic!("{op} read as {ask:?}"),
                };
                prop_assert_eq!(ask, again);
            }
            Err(BadRequest::Subject(named)) => prop_assert_eq!(named, subject),
            Err(BadRequest::Community(_) | BadRequest::Op(_) | BadRequest::Undecodable(_)) => {}
        }
    }

    #[test]
    fn a_request_sent_by_the_sync_client_is_read_back_as_sent(
        community in "[0-9]{12}",
        case_id in wire_id(),
        after_seq in any::<u64>(),
        tier in prop::sample::select(vec![Tier::Village, Tier::Street, Tier::District]),
    ) {
        let community: OrgCode = community.parse().unwrap();
        let request = pb::EventsRequest { case_id, after_seq };
        let subject = sync_subject(tier, &community, Op::Events);
        let (read, ask) = request_of(&subject, &request.encode_to_vec()).unwrap();
        prop_assert_eq!(read, community);
        prop_assert_eq!(ask, Ask::Events(request));
    }

    #[test]
    fn any_sync_answer_is_a_reply_a_refusal_or_undecodable(
        payload in reply_payload(),
        refusal in prop::option::weighted(0.2, "[ -~]{0,40}"),
    ) {
        let headers = refusal.as_ref().map(|message| {
            let mut headers = HeaderMap::new();
            headers.insert("Wangge-Sync-Error", message.as_str());
            headers
        });
        let digest = answer_of::<pb::DigestReply>("street", headers.as_ref(), &payload);
        let marks = answer_of::<pb::MarksReply>("street", headers.as_ref(), &payload);
        let events = answer_of::<pb::EventsReply>("street", headers.as_ref(), &payload);
        if refusal.is_some() {
            for result in [digest.map(|_| ()), marks.map(|_| ()), events.map(|_| ())] {
                prop_assert!(matches!(result, Err(SyncError::Refused { tier: "street", .. })), "{result:?}");
            }
        } else {
            // Whatever decodes is the reply the bytes encode; the rest is Undecodable.
            let check = |decoded: bool, result: Result<(), SyncError>| match result {
                Ok(()) => decoded,
                Err(SyncError::Undecodable("street")) => !decoded,
                Err(_) => false,
            };
            prop_assert!(check(pb::DigestReply::decode(&payload[..]).is_ok(), digest.map(|_| ())));
            prop_assert!(check(pb::MarksReply::decode(&payload[..]).is_ok(), marks.map(|_| ())));
            prop_assert!(check(pb::EventsReply::decode(&payload[..]).is_ok(), events.map(|_| ())));
        }
    }
}

//! The store's batched writes against a real PostgreSQL: what a replica writes for a whole batch
//! of events in one statement is what it would have written one event at a time.

#![allow(clippy::unwrap_used)]

use sqlx::PgPool;
use uuid::Uuid;
use wangge_proto as pb;
use wangge_store::{cases, replication};
use wangge_tests::db::TestDb;

fn case(id: Uuid, number: &str, state: pb::CaseState, version: u64) -> pb::Case {
    pb::Case {
        id: id.to_string(),
        number: number.to_owned(),
        client_id: format!("client-{number}"),
        category_code: "szcg-01-01".to_owned(),
        description: "暴露垃圾".to_owned(),
        grid_code: "350205002006001".to_owned(),
        state: state as i32,
        version,
        department_code: if version > 1 {
            "350205002-cgzd".to_owned()
        } else {
            String::new()
        },
        ..Default::default()
    }
}

fn event(case_id: Uuid, seq: u64) -> pb::CaseEvent {
    pb::CaseEvent {
        event_id: Uuid::now_v7().to_string(),
        case_id: case_id.to_string(),
        seq,
        tier: pb::Tier::Village as i32,
        ..Default::default()
    }
}

fn event_ids(applied: &[(pb::Case, pb::CaseEvent)]) -> Vec<Uuid> {
    applied
        .iter()
        .map(|(_, e)| e.event_id.parse().unwrap())
        .collect()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn a_batch_of_events_is_stored_as_one_at_a_time_would_be() {
    let db = TestDb::seeded("store_batch").await;
    let pool = db.pool().await;
    let before = cases::count(&pool).await.unwrap();
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    // A case already held, and a new one that gets two events in the batch.
    let mut conn = pool.acquire().await.unwrap();
    let held = case(first, "n-1", pb::CaseState::Reported, 1);
    cases::append(&mut conn, &held, &event(first, 1), None)
        .await
        .unwrap();
    let applied = vec![
        (
            case(second, "n-2", pb::CaseState::Reported, 1),
            event(second, 1),
        ),
        (
            case(first, "n-1", pb::CaseState::Accepted, 2),
            event(first, 2),
        ),
        (
            case(second, "n-2", pb::CaseState::Dispatched, 2),
            event(second, 2),
        ),
    ];
    let keys = event_ids(&applied);
    let mut tx = pool.begin().await.unwrap();
    let locked = cases::load_many(&mut tx, &[second, first]).await.unwrap();
    assert_eq!(locked.len(), 1, "only the held case is found");
    assert_eq!(locked[&first].version, 1);
    assert_eq!(
        replication::claim_inbox_many(&mut tx, &keys).await.unwrap(),
        3
    );
    cases::append_many(&mut tx, &applied, &[]).await.unwrap();
    tx.commit().await.unwrap();

    // Each case's last projection, every event, one new case counted.
    let state = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, i64, Option<String>)>(
                "SELECT state, version, department FROM cases WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        state(first).await,
        ("accepted".into(), 2, Some("350205002-cgzd".into()))
    );
    assert_eq!(
        state(second).await,
        ("dispatched".into(), 2, Some("350205002-cgzd".into()))
    );
    assert_eq!(
        cases::get(&pool, second).await.unwrap().unwrap().version,
        2,
        "the snapshot is the last one"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM case_events").await,
        4,
        "every event is logged"
    );
    assert_eq!(cases::count(&pool).await.unwrap(), before + 2);

    // The same keys again are applied already: none of them is new.
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(
        replication::claim_inbox_many(&mut tx, &keys).await.unwrap(),
        0
    );
    // An empty batch writes nothing.
    cases::append_many(&mut tx, &[], &[]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(cases::count(&pool).await.unwrap(), before + 2);
}

#[tokio::test]
async fn a_batch_of_claims_numbers_each_community_in_order_and_skips_taken_keys() {
    use wangge_store::intake::{self, Claim};

    let db = TestDb::seeded("store_claims").await;
    let pool = db.pool().await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 27).unwrap();
    let (a, b) = ("350205002006", "350205002007");
    let digest = [1u8; 32];
    // The keys point at their cases, checked at commit: the claimed ones get theirs.
    async fn cases_of(tx: &mut sqlx::PgConnection, claims: &[Claim<'_>], numbers: &[Option<i32>]) {
        let applied: Vec<(pb::Case, pb::CaseEvent)> = claims
            .iter()
            .zip(numbers)
            .filter_map(|(claim, number)| {
                let number = number.map(|n| format!("{}-{n:04}", claim.community))?;
                Some((
                    case(claim.case_id, &number, pb::CaseState::Reported, 1),
                    event(claim.case_id, 1),
                ))
            })
            .collect();
        cases::append_many(tx, &applied, &[]).await.unwrap();
    }
    let claim = |client_id: &'static str, community: &'static str| Claim {
        reporter_id: "gw-1",
        client_id,
        case_id: Uuid::now_v7(),
        digest: &digest,
        community,
        day,
    };

    // An earlier report took key "k1" and number 1 of community a.
    let mut tx = pool.begin().await.unwrap();
    let earlier = [claim("k1", a)];
    let numbers = intake::claim_numbered(&mut tx, &earlier).await.unwrap();
    assert_eq!(numbers, vec![Some(1)]);
    cases_of(&mut tx, &earlier, &numbers).await;
    tx.commit().await.unwrap();

    // A batch: two of a, one of b, k1 again (taken before) and k2 twice (the copy loses).
    let batch = [
        claim("k2", a),
        claim("k1", a),
        claim("k3", b),
        claim("k2", a),
        claim("k4", a),
    ];
    let mut tx = pool.begin().await.unwrap();
    let numbers = intake::claim_numbered(&mut tx, &batch).await.unwrap();
    assert_eq!(numbers, vec![Some(2), None, Some(1), None, Some(3)]);
    cases_of(&mut tx, &batch, &numbers).await;
    tx.commit().await.unwrap();

    // Each key holds the case of its first claim; a taken key used up no number.
    let k2 = intake::find(&mut pool.acquire().await.unwrap(), "gw-1", "k2")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(k2.case_id, batch[0].case_id);
    let last: Vec<(String, i32)> =
        sqlx::query_as("SELECT community_code, last FROM case_numbers ORDER BY community_code")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(last, vec![(a.to_owned(), 3), (b.to_owned(), 1)]);

    // A batch rolled back draws nothing; an empty one asks nothing.
    let mut tx = pool.begin().await.unwrap();
    let rolled = [claim("k5", a)];
    assert_eq!(
        intake::claim_numbered(&mut tx, &rolled).await.unwrap(),
        vec![Some(4)]
    );
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let again = [claim("k5", a)];
    let numbers = intake::claim_numbered(&mut tx, &again).await.unwrap();
    assert_eq!(numbers, vec![Some(4)]);
    cases_of(&mut tx, &again, &numbers).await;
    assert!(
        intake::claim_numbered(&mut tx, &[])
            .await
            .unwrap()
            .is_empty()
    );
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn an_authored_batch_waits_in_the_outbox_until_every_peer_confirmed_it() {
    use wangge_store::outbox;
    /// The case subjects of the community the rows' grid lies in, as a receipt names it.
    const WITHIN: &str = "wg.case.350205.002.006.";

    let db = TestDb::seeded("store_outbox").await;
    let pool = db.pool().await;
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    let applied = vec![
        (
            case(first, "o-1", pb::CaseState::Reported, 1),
            event(first, 1),
        ),
        (
            case(second, "o-2", pb::CaseState::Reported, 1),
            event(second, 1),
        ),
    ];
    let ids = event_ids(&applied);
    let peers = ["street", "district"];
    let outgoing: Vec<cases::Outgoing<'_>> = applied
        .iter()
        .map(|_| cases::Outgoing {
            subject: "wg.case.350205.002.006.001",
            body: b"envelope",
            peers: &peers,
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    // Outbox rows must come one per event.
    assert!(
        cases::append_many(&mut tx, &applied, &outgoing[..1])
            .await
            .is_err()
    );
    tx.rollback().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    cases::append_many(&mut tx, &applied, &outgoing)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let pending = |id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<String>>(
                "SELECT pending_tiers FROM outbox WHERE event_id = $1",
            )
            .bind(id)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        pending(ids[0]).await,
        Some(vec!["street".into(), "district".into()])
    );

    // A receipt for another community confirms nothing, whatever ids it names.
    assert_eq!(
        outbox::confirm(&pool, "street", "wg.case.350205.002.007.", &ids)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        pending(ids[1]).await,
        Some(vec!["street".into(), "district".into()])
    );
    // The street confirms both before the relay recorded a send: they stay, for the district.
    assert_eq!(
        outbox::confirm(&pool, "street", WITHIN, &ids)
            .await
            .unwrap(),
        0
    );
    assert_eq!(pending(ids[1]).await, Some(vec!["district".to_owned()]));
    // Again: nothing changes.
    assert_eq!(
        outbox::confirm(&pool, "street", WITHIN, &ids)
            .await
            .unwrap(),
        0
    );

    // The first was sent; the district confirms both: the first leaves, the second waits for the
    // relay's bookkeeping of its send, with no peer left.
    sqlx::query("UPDATE outbox SET published_at = now() WHERE event_id = $1")
        .bind(ids[0])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox::confirm(&pool, "district", WITHIN, &ids)
            .await
            .unwrap(),
        1
    );
    assert_eq!(pending(ids[0]).await, None);
    assert_eq!(pending(ids[1]).await, Some(Vec::new()));

    // Once its send is recorded, a late copy of a confirmation takes it out.
    sqlx::query("UPDATE outbox SET published_at = now() WHERE event_id = $1")
        .bind(ids[1])
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(
        outbox::confirm(&pool, "district", WITHIN, &ids[1..])
            .await
            .unwrap(),
        1
    );
    assert_eq!(pending(ids[1]).await, None);
}

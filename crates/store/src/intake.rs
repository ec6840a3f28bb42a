//! The village's intake keys: which case a reporter's `client_id` created, and a digest of the
//! report it came with (`migrations/20261127000001_intake.sql`).

use sqlx::PgConnection;
use uuid::Uuid;

use crate::Result;

/// A report taken before under the same reporter and client id.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct IntakeKey {
    pub case_id: Uuid,
    /// SHA-256 of the normalized report; `None` for keys older than digests.
    pub payload_digest: Option<Vec<u8>>,
}

impl IntakeKey {
    /// Whether a report with this digest is the one the key was taken with.
    pub fn matches(&self, digest: &[u8; 32]) -> bool {
        // A key from before digests cannot tell; it answers as resubmissions were answered then.
        self.payload_digest
            .as_deref()
            .is_none_or(|stored| stored == digest)
    }
}

/// The key of `client_id` from `reporter_id`, if any.
pub async fn find(
    conn: &mut PgConnection,
    reporter_id: &str,
    client_id: &str,
) -> Result<Option<IntakeKey>> {
    Ok(sqlx::query_as::<_, IntakeKey>(
        "SELECT case_id, payload_digest FROM intake_keys WHERE reporter_id = $1 AND client_id = $2",
    )
    .bind(reporter_id)
    .bind(client_id)
    .fetch_optional(conn)
    .await?)
}

/// Claims the key for a new case, in the report's transaction. None when the key is taken: a
/// concurrent copy that holds it is waited for, so after None [`find`] sees the winner.
///
/// When the key was free, also draws the community's next daily report number, in the same
/// round trip: `Some(sequence)` (350205002006-20261126-`sequence`, see `cases::case_number`);
/// `None` means the key was taken, and no number is used up.
pub async fn claim_numbered(
    conn: &mut PgConnection,
    key: (&str, &str),
    case_id: Uuid,
    digest: &[u8; 32],
    (community, day): (&str, chrono::NaiveDate),
) -> Result<Option<i32>> {
    let (reporter_id, client_id) = key;
    let last: Option<i32> = sqlx::query_scalar(
        "WITH claimed AS (
            INSERT INTO intake_keys (reporter_id, client_id, case_id, payload_digest)
            VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING
            RETURNING 1
         ), numbered AS (
            INSERT INTO case_numbers (community_code, day, last)
            SELECT $5, $6, 1 WHERE EXISTS (SELECT 1 FROM claimed)
            ON CONFLICT (community_code, day) DO UPDATE SET last = case_numbers.last + 1
            RETURNING last
         )
         SELECT last FROM numbered",
    )
    .bind(reporter_id)
    .bind(client_id)
    .bind(case_id)
    .bind(digest.as_slice())
    .bind(community)
    .bind(day)
    .fetch_optional(conn)
    .await?;
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_matches_its_own_digest_and_old_keys_match_any() {
        let key = IntakeKey {
            case_id: Uuid::nil(),
            payload_digest: Some(vec![7; 32]),
        };
        assert!(key.matches(&[7; 32]));
        assert!(!key.matches(&[8; 32]));
        let old = IntakeKey {
            case_id: Uuid::nil(),
            payload_digest: None,
        };
        assert!(old.matches(&[8; 32]));
    }
}

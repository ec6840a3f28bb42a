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

/// A new report's claim: its intake key, the case it would create and where its number is drawn.
#[derive(Debug, Clone, Copy)]
pub struct Claim<'a> {
    pub reporter_id: &'a str,
    pub client_id: &'a str,
    pub case_id: Uuid,
    /// SHA-256 of the normalized report.
    pub digest: &'a [u8; 32],
    /// The community whose daily numbers the report draws from, and the day (China time).
    pub community: &'a str,
    pub day: chrono::NaiveDate,
}

/// Claims the keys of a batch of new reports, in the batch's transaction and in one statement, and
/// draws each claimed report its community's next daily number (350205002006-20261126-`sequence`,
/// see `cases::case_number`): `Some(sequence)` per claim, in the batch's order, numbered in that
/// order within a community and day.
///
/// `None` means the key was taken, by an earlier report or by an earlier claim of the same batch,
/// and no number is used up. A concurrent transaction holding a key is waited for, so after None
/// [`find`] sees the winner once this transaction ends.
pub async fn claim_numbered(
    conn: &mut PgConnection,
    claims: &[Claim<'_>],
) -> Result<Vec<Option<i32>>> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    // Each (community, day) row is bumped once by the number of its claims (an upsert may not
    // touch a row twice in one statement), in key order so that two batches never wait on each
    // other in a circle; the claims then take the numbers below the new last in batch order.
    let numbered: Vec<(i64, i32)> = sqlx::query_as(
        "WITH input AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::bytea[], $5::text[],
                                 $6::date[]) WITH ORDINALITY
              AS i(reporter_id, client_id, case_id, digest, community_code, day, ord)
         ), claimed AS (
            INSERT INTO intake_keys (reporter_id, client_id, case_id, payload_digest)
            SELECT reporter_id, client_id, case_id, digest FROM input ORDER BY ord
            ON CONFLICT DO NOTHING
            RETURNING case_id
         ), won AS (
            SELECT input.* FROM input JOIN claimed USING (case_id)
         ), counted AS (
            SELECT community_code, day, count(*)::integer AS n FROM won GROUP BY community_code, day
         ), bumped AS (
            INSERT INTO case_numbers (community_code, day, last)
            SELECT community_code, day, n FROM counted ORDER BY community_code, day
            ON CONFLICT (community_code, day) DO UPDATE SET last = case_numbers.last + EXCLUDED.last
            RETURNING community_code, day, last
         )
         SELECT won.ord,
                (bumped.last - counted.n
                 + row_number() OVER (PARTITION BY won.community_code, won.day ORDER BY won.ord))::integer
         FROM won
         JOIN counted USING (community_code, day)
         JOIN bumped USING (community_code, day)",
    )
    .bind(claims.iter().map(|c| c.reporter_id).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.client_id).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.case_id).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.digest.as_slice()).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.community).collect::<Vec<_>>())
    .bind(claims.iter().map(|c| c.day).collect::<Vec<_>>())
    .fetch_all(conn)
    .await?;
    let mut sequences = vec![None; claims.len()];
    for (ord, sequence) in numbered {
        // WITH ORDINALITY counts from 1.
        let slot = usize::try_from(ord - 1)
            .ok()
            .and_then(|index| sequences.get_mut(index))
            .ok_or_else(|| crate::Error::Mismatch(format!("claim {ord} of {}", claims.len())))?;
        *slot = Some(sequence);
    }
    Ok(sequences)
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

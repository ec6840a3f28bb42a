//! Work lists (a department's assigned cases, a grid worker's tasks): ordered by urgency, then
//! time left on the stage's clock. Time left is worked out on the work calendar for each case, so
//! the database cannot order by it: the list is read whole, ordered here, and only then cut into
//! pages. The open work of one department or one grid worker is small by nature (hundreds of
//! cases, not the tier's history), and it is read a page of the database at a time.

use sqlx::PgPool;
use uuid::Uuid;
use wangge_proto as pb;
use wangge_store::cases;

use crate::Error;

/// Cases read per query.
const READ_PAGE: i64 = 500;
/// Most cases one work list reads: a department with more open work than this has a problem no
/// ordering solves, and the tier's memory stays bounded (some 40 MB of cases at the most).
const MAX_READ: usize = 20_000;

/// Most cases on one page of a work list.
pub const MAX_PAGE: u32 = 500;
/// Cases on a page when the caller does not say.
pub const DEFAULT_PAGE: u32 = 100;

/// Every case matching `filter` (whatever its `limit` and `after`), in id order, up to
/// [`MAX_READ`]: beyond, the oldest are ordered and the rest left out, with an error logged.
pub async fn read_all(pool: &PgPool, filter: cases::Filter) -> Result<Vec<pb::Case>, Error> {
    read_up_to(pool, filter, MAX_READ).await
}

/// [`read_all`] with its bound given: the reads stop at the first full page that reaches `most`.
pub async fn read_up_to(
    pool: &PgPool,
    mut filter: cases::Filter,
    most: usize,
) -> Result<Vec<pb::Case>, Error> {
    filter.limit = READ_PAGE;
    filter.after = None;
    let mut all = Vec::new();
    loop {
        let page = cases::list(pool, &filter).await?;
        let full = page.len() as i64 == READ_PAGE;
        filter.after = page.last().and_then(|c| Uuid::parse_str(&c.id).ok());
        all.extend(page);
        if all.len() >= most && full {
            tracing::error!(
                read = all.len(),
                department = ?filter.department,
                "a work list holds more open cases than one list reads; the newest are left out"
            );
            return Ok(all);
        }
        if !full || filter.after.is_none() {
            return Ok(all);
        }
    }
}

/// Which page of an ordered work list a caller asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1 to [`MAX_PAGE`].
    pub size: u32,
    /// Cases of the ordered list before this page.
    pub offset: usize,
}

impl Page {
    /// `page_size` (0: [`DEFAULT_PAGE`], at most [`MAX_PAGE`]) and `page_token` (empty for the
    /// first page, else a `next_page_token`).
    pub fn parse(page_size: u32, page_token: &str) -> Result<Page, Error> {
        let offset = match page_token.trim() {
            "" => 0,
            token => token
                .parse()
                .map_err(|_| Error::invalid("page_token", "not a token from a previous page"))?,
        };
        Ok(Page {
            size: match page_size {
                0 => DEFAULT_PAGE,
                n => n.min(MAX_PAGE),
            },
            offset,
        })
    }

    /// This page of the ordered `cases`, and the token of the next page (empty when none).
    ///
    /// The token is a position in the order, so a list that changed between two pages (a case
    /// came, went, or overtook another as the clocks ran) may repeat or skip a case at the
    /// boundary; a department works from the first page, which is always current.
    pub fn cut(self, mut cases: Vec<pb::Case>) -> (Vec<pb::Case>, String) {
        let end = self.offset.saturating_add(self.size as usize);
        let next = if cases.len() > end {
            end.to_string()
        } else {
            String::new()
        };
        cases.truncate(end);
        let page = cases.split_off(self.offset.min(cases.len()));
        (page, next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: usize) -> Vec<pb::Case> {
        (0..n)
            .map(|i| pb::Case {
                number: i.to_string(),
                ..Default::default()
            })
            .collect()
    }

    fn numbers(cases: &[pb::Case]) -> Vec<&str> {
        cases.iter().map(|c| c.number.as_str()).collect()
    }

    #[test]
    fn pages_walk_the_ordered_list_and_the_last_has_no_token() {
        let page = Page::parse(2, "").unwrap();
        let (first, token) = page.cut(numbered(5));
        assert_eq!((numbers(&first), token.as_str()), (vec!["0", "1"], "2"));
        let (second, token) = Page::parse(2, &token).unwrap().cut(numbered(5));
        assert_eq!((numbers(&second), token.as_str()), (vec!["2", "3"], "4"));
        let (last, token) = Page::parse(2, &token).unwrap().cut(numbered(5));
        assert_eq!((numbers(&last), token.as_str()), (vec!["4"], ""));
        // A list that shrank since: an empty last page, no error.
        let (gone, token) = Page::parse(2, "4").unwrap().cut(numbered(3));
        assert!(gone.is_empty() && token.is_empty());
    }

    #[test]
    fn page_sizes_default_and_are_capped_and_tokens_are_checked() {
        assert_eq!(Page::parse(0, "").unwrap().size, DEFAULT_PAGE);
        assert_eq!(Page::parse(100_000, "").unwrap().size, MAX_PAGE);
        assert_eq!(Page::parse(7, " 40 ").unwrap().offset, 40);
        for bad in ["x", "-1", "1.5"] {
            assert!(Page::parse(0, bad).is_err(), "{bad}");
        }
    }
}

//! Keyset pagination by UUIDv7 id (newest first), as `PageRequest` asks for it:
//! the page size's rule and the cursor's, in one place for every list that pages
//! by id (agents, wallet history).

use app::error::AppError;
use app::model::PageRequest;
use uuid::Uuid;

pub const MAX_PAGE: u32 = 200;
pub const DEFAULT_PAGE: u32 = 50;

/// The page size asked for (1 to [`MAX_PAGE`], else `400 invalid_limit`) and the
/// id the page starts below (`400 invalid_cursor` for anything this API did not
/// hand out).
pub fn parse(page: &PageRequest) -> Result<(u32, Option<Uuid>), AppError> {
    let limit = match page.limit {
        Some(n) if !(1..=MAX_PAGE).contains(&n) => {
            return Err(AppError::bad_request("invalid_limit", format!("limit must be 1 to {MAX_PAGE}")));
        }
        limit => limit.unwrap_or(DEFAULT_PAGE),
    };
    let before =
        match page.cursor.as_deref().filter(|c| !c.is_empty()) {
            Some(cursor) => Some(cursor.parse::<Uuid>().map_err(|_| {
                AppError::bad_request("invalid_cursor", "cursor is not one this API returned")
            })?),
            None => None,
        };
    Ok((limit, before))
}

/// `rows` read with one more than `limit`: cut to the page, and the cursor of the
/// next page (the last id kept) when there is one.
pub fn cut<T>(rows: &mut Vec<T>, limit: u32, id: impl Fn(&T) -> Uuid) -> Option<String> {
    if rows.len() <= limit as usize {
        return None;
    }
    rows.truncate(limit as usize);
    rows.last().map(|r| id(r).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(limit: Option<u32>, cursor: Option<&str>) -> PageRequest {
        PageRequest { limit, cursor: cursor.map(String::from) }
    }

    #[test]
    fn limits_and_cursors() {
        let id = Uuid::now_v7();
        assert_eq!(parse(&req(None, None)).unwrap(), (DEFAULT_PAGE, None));
        assert_eq!(parse(&req(Some(200), Some(""))).unwrap(), (200, None));
        assert_eq!(parse(&req(Some(1), Some(&id.to_string()))).unwrap(), (1, Some(id)));
        assert_eq!(parse(&req(Some(0), None)).unwrap_err().code, "invalid_limit");
        assert_eq!(parse(&req(Some(201), None)).unwrap_err().code, "invalid_limit");
        assert_eq!(parse(&req(None, Some("nope"))).unwrap_err().code, "invalid_cursor");
    }

    #[test]
    fn a_page_is_cut_with_the_next_cursor_only_when_more_remain() {
        let ids: Vec<Uuid> = (0..3).map(|_| Uuid::now_v7()).collect();
        let mut rows = ids.clone();
        assert_eq!(cut(&mut rows, 2, |u| *u), Some(ids[1].to_string()));
        assert_eq!(rows, ids[..2]);
        let mut rows = ids.clone();
        assert_eq!(cut(&mut rows, 3, |u| *u), None);
        assert_eq!(rows.len(), 3);
    }
}

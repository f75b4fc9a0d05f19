//! Bitbucket's paging: `start` and `limit` in, `{size, limit, isLastPage,
//! start, nextPageStart, values}` out.

use serde::Serialize;

/// Largest page a caller may ask for.
pub const MAX_PAGE_LIMIT: u32 = 1000;
pub const DEFAULT_PAGE_LIMIT: u32 = 25;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub start: u32,
    pub limit: u32,
}

impl Default for PageRequest {
    fn default() -> Self {
        PageRequest {
            start: 0,
            limit: DEFAULT_PAGE_LIMIT,
        }
    }
}

impl PageRequest {
    /// A page request with `limit` clamped to 1..=MAX_PAGE_LIMIT.
    pub fn new(start: u32, limit: u32) -> Self {
        PageRequest {
            start,
            limit: limit.clamp(1, MAX_PAGE_LIMIT),
        }
    }

    /// Builds the page from up to `limit + 1` rows fetched at `start`: the
    /// extra row only tells whether another page follows.
    pub fn page<T>(self, mut rows: Vec<T>) -> Page<T> {
        let is_last_page = rows.len() <= self.limit as usize;
        rows.truncate(self.limit as usize);
        Page {
            size: rows.len() as u32,
            limit: self.limit,
            is_last_page,
            start: self.start,
            next_page_start: (!is_last_page).then(|| self.start + self.limit),
            values: rows,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub size: u32,
    pub limit: u32,
    pub is_last_page: bool,
    pub start: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_start: Option<u32>,
    pub values: Vec<T>,
}

impl<T> Page<T> {
    /// The same page with each value converted.
    pub fn map<U>(self, convert: impl FnMut(T) -> U) -> Page<U> {
        Page {
            size: self.size,
            limit: self.limit,
            is_last_page: self.is_last_page,
            start: self.start,
            next_page_start: self.next_page_start,
            values: self.values.into_iter().map(convert).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_knows_whether_another_follows() {
        let request = PageRequest::new(10, 2);
        let last = request.page(vec![1, 2]);
        assert!(last.is_last_page);
        assert_eq!(last.next_page_start, None);
        let more = request.page(vec![1, 2, 3]);
        assert!(!more.is_last_page);
        assert_eq!(more.values, vec![1, 2]);
        assert_eq!(more.next_page_start, Some(12));
        let empty = request.page(Vec::<i32>::new());
        assert_eq!((empty.size, empty.is_last_page), (0, true));
        assert_eq!(PageRequest::new(0, 0).limit, 1);
        assert_eq!(PageRequest::new(0, 1_000_000).limit, MAX_PAGE_LIMIT);
    }
}

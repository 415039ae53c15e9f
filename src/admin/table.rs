//! A result set of the admin console: named, typed text columns and rows, encoded as
//! RowDescription + DataRow* + CommandComplete. Types follow PgBouncer's console (see
//! docs/admin-console.md): text, int4, int8 and numeric.

use bytes::BytesMut;

use crate::protocol::write;

/// `text`.
pub const TEXT: u32 = 25;
/// `int4`.
pub const INT4: u32 = 23;
/// `int8`.
pub const INT8: u32 = 20;
/// `numeric` (PgBouncer's type for statistics).
pub const NUMERIC: u32 = 1700;

/// One value: text, or NULL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Val(pub Option<String>);

impl Val {
    /// SQL NULL.
    pub const NULL: Val = Val(None);
}

impl From<&str> for Val {
    fn from(s: &str) -> Val {
        Val(Some(s.to_string()))
    }
}

impl From<String> for Val {
    fn from(s: String) -> Val {
        Val(Some(s))
    }
}

impl From<&String> for Val {
    fn from(s: &String) -> Val {
        Val(Some(s.clone()))
    }
}

impl From<bool> for Val {
    /// As PgBouncer prints flags: `1` or `0`.
    fn from(b: bool) -> Val {
        Val(Some(if b { "1" } else { "0" }.to_string()))
    }
}

macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl From<$t> for Val {
            fn from(v: $t) -> Val {
                Val(Some(v.to_string()))
            }
        }
    )*};
}
int_val!(u16, u32, u64, i32, i64, usize);

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map_or(Val::NULL, Into::into)
    }
}

/// A result set.
#[derive(Debug, Clone)]
pub struct Table {
    /// Column names and type oids.
    pub columns: Vec<(&'static str, u32)>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<Val>>,
    /// A NoticeResponse sent before the rows (`SHOW HELP`).
    pub notice: Option<String>,
}

impl Table {
    /// An empty table with these columns.
    pub fn new(columns: &[(&'static str, u32)]) -> Table {
        Table { columns: columns.to_vec(), rows: Vec::new(), notice: None }
    }

    /// Appends a row. Invariant: one value per column (checked in debug builds).
    pub fn push(&mut self, row: Vec<Val>) {
        debug_assert_eq!(row.len(), self.columns.len(), "row width of {:?}", self.columns.first());
        self.rows.push(row);
    }

    /// The column names.
    pub fn names(&self) -> Vec<&'static str> {
        self.columns.iter().map(|c| c.0).collect()
    }

    /// The value of column `name` in row `i` (tests, metrics).
    pub fn get(&self, i: usize, name: &str) -> Option<&str> {
        let c = self.columns.iter().position(|c| c.0 == name)?;
        self.rows.get(i)?.get(c)?.0.as_deref()
    }

    /// Appends the wire encoding, ending with CommandComplete `tag`.
    pub fn encode(&self, out: &mut BytesMut, tag: &str) {
        if let Some(n) = &self.notice {
            write::notice(out, n);
        }
        if !self.columns.is_empty() {
            write::row_description(out, &self.columns);
            for row in &self.rows {
                write::data_row(out, row.iter().map(|v| v.0.as_deref()));
            }
        }
        write::command_complete(out, tag);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_rows_with_nulls() {
        let mut t = Table::new(&[("a", TEXT), ("b", INT4)]);
        t.push(vec!["x".into(), Val::NULL]);
        t.push(vec![Val::from(None::<u32>), 7u32.into()]);
        assert_eq!(t.get(1, "b"), Some("7"));
        assert_eq!(t.get(0, "b"), None);
        let mut out = BytesMut::new();
        t.encode(&mut out, "SHOW");
        assert_eq!(out[0], b'T');
        let rows = out.windows(1).filter(|w| w[0] == b'D').count();
        assert!(rows >= 2);
        assert!(out.ends_with(b"SHOW\0"));
    }
}

//! One mapping from a result row to a record for both backends: a record type names its
//! columns once ([`FromRow`]), and [`Inbox::select`] runs the query on SQLite or PostgreSQL.
//! A column of an unexpected type is an error, never a panic.

use super::{Inbox, se};
use crate::Result;

/// A column type both drivers can read.
pub(super) trait Column:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}

impl<T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>> Column for T {}

/// A row read by either driver.
pub(super) enum Row<'r, 's> {
    Sqlite(&'r rusqlite::Row<'s>),
    Postgres(&'r tokio_postgres::Row),
}

impl Row<'_, '_> {
    /// Column `i` (from 0).
    pub(super) fn get<T: Column>(&self, i: usize) -> Result<T> {
        match self {
            Row::Sqlite(r) => r.get(i).map_err(se),
            Row::Postgres(r) => r.try_get(i).map_err(se),
        }
    }
}

/// A record read from the inbox's tables.
pub(super) trait FromRow: Sized + Send + 'static {
    fn from_row(r: &Row<'_, '_>) -> Result<Self>;
}

impl Inbox {
    /// The rows of `q`, a query ending in `LIMIT ` (the placeholder is added per backend),
    /// with `limit` bound, each mapped by `T`'s [`FromRow`].
    pub(super) async fn select<T: FromRow>(&self, q: &'static str, limit: i64) -> Result<Vec<T>> {
        match self {
            Inbox::Sqlite { conn, .. } => Self::sqlite(conn, move |c| {
                let mut st = c.prepare(&format!("{q}?1"))?;
                let mut rows = st.query([limit])?;
                let mut out = Vec::new();
                while let Some(r) = rows.next()? {
                    out.push(T::from_row(&Row::Sqlite(r)));
                }
                Ok(out)
            })
            .await?
            .into_iter()
            .collect(),
            Inbox::Postgres(pool) => {
                let c = pool.get().await.map_err(se)?;
                let rows = c.query(&format!("{q}$1"), &[&limit]).await.map_err(se)?;
                rows.iter()
                    .map(|r| T::from_row(&Row::Postgres(r)))
                    .collect()
            }
        }
    }
}

//! The one seam the SQL code talks through: a connection or transaction that
//! runs statements. On the store's pooled connections statements are prepared
//! once per connection (deadpool's statement cache), saving a round trip per
//! statement; inside a caller's own transaction they are prepared as they run.

use std::future::Future;

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// Runs statements given as SQL text.
pub trait Conn: Sync {
    /// All rows.
    fn query(&self, sql: &str, params: Params<'_>) -> impl Future<Output = Result<Vec<Row>, Error>> + Send;
    /// Exactly one row.
    fn query_one(&self, sql: &str, params: Params<'_>) -> impl Future<Output = Result<Row, Error>> + Send;
    /// At most one row.
    fn query_opt(&self, sql: &str, params: Params<'_>) -> impl Future<Output = Result<Option<Row>, Error>> + Send;
    /// Rows affected.
    fn execute(&self, sql: &str, params: Params<'_>) -> impl Future<Output = Result<u64, Error>> + Send;
}

macro_rules! cached_conn {
    ($t:ty, $inner:ident) => {
        impl Conn for $t {
            async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
                let st = self.prepare_cached(sql).await?;
                tokio_postgres::GenericClient::query($inner(self), &st, params).await
            }
            async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
                let st = self.prepare_cached(sql).await?;
                tokio_postgres::GenericClient::query_one($inner(self), &st, params).await
            }
            async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
                let st = self.prepare_cached(sql).await?;
                tokio_postgres::GenericClient::query_opt($inner(self), &st, params).await
            }
            async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
                let st = self.prepare_cached(sql).await?;
                tokio_postgres::GenericClient::execute($inner(self), &st, params).await
            }
        }
    };
}

fn txn<'a, 'b>(t: &'a deadpool_postgres::Transaction<'b>) -> &'a tokio_postgres::Transaction<'b> {
    t
}

fn client(c: &deadpool_postgres::Client) -> &tokio_postgres::Client {
    c
}

cached_conn!(deadpool_postgres::Transaction<'_>, txn);
cached_conn!(deadpool_postgres::Client, client);

impl Conn for tokio_postgres::Transaction<'_> {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        tokio_postgres::Transaction::query(self, sql, params).await
    }
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        tokio_postgres::Transaction::query_one(self, sql, params).await
    }
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        tokio_postgres::Transaction::query_opt(self, sql, params).await
    }
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        tokio_postgres::Transaction::execute(self, sql, params).await
    }
}

//! The one seam the SQL code talks through: a connection or transaction that
//! runs statements. On the store's pooled connections statements are prepared
//! once per connection (deadpool's statement cache), saving a round trip per
//! statement; inside a caller's own transaction they are prepared as they run.
//! The store's own transactions ([`Pipelined`]) send `BEGIN` with their first
//! statement and `COMMIT` with their last.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Error, Row, Statement};

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
    /// The transaction's last statement: on a [`Pipelined`] transaction the
    /// `COMMIT` goes with it, in the same round trip; elsewhere (a caller's
    /// transaction, which the caller commits) it is [`Conn::execute`].
    fn execute_last(&self, sql: &str, params: Params<'_>) -> impl Future<Output = Result<u64, Error>> + Send {
        self.execute(sql, params)
    }
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

/// One of the store's own transactions on a pooled connection, saving two
/// round trips of the four a short transaction otherwise waits for:
/// `BEGIN` is sent with the first statement (not awaited on its own), and
/// `COMMIT` with the last ([`Conn::execute_last`]). Statements are still
/// sent in order on the one connection, so the server sees exactly
/// `BEGIN; ...; COMMIT`. Measured on W1 and W3, where each claim is a
/// transaction and a claimer waits on every round trip (see
/// docs/benchmarks.md).
///
/// Dropped before [`Pipelined::commit`] or [`Pipelined::rollback`] (a
/// cancelled future), the connection leaves the pool and closes, which
/// rolls back whatever was open.
pub(crate) struct Pipelined {
    client: Option<deadpool_postgres::Client>,
    /// `BEGIN` has been sent.
    begun: AtomicBool,
    /// `COMMIT` has been sent with the last statement.
    committed: AtomicBool,
}

impl Pipelined {
    pub fn new(client: deadpool_postgres::Client) -> Self {
        Pipelined { client: Some(client), begun: AtomicBool::new(false), committed: AtomicBool::new(false) }
    }

    fn client(&self) -> &deadpool_postgres::Client {
        self.client.as_ref().expect("held until the transaction ends")
    }

    /// `BEGIN`, for the first statement to send ahead of itself; `None` once sent.
    fn begin(&self) -> Option<impl Future<Output = Result<(), Error>> + Send + '_> {
        let first = !self.begun.swap(true, Ordering::SeqCst);
        first.then(|| tokio_postgres::Client::batch_execute(self.client(), "BEGIN"))
    }

    /// Prepares `sql` (cached per connection), then sends `BEGIN` if no
    /// statement has gone yet, then the statement, in one poll: nothing can
    /// come between them on the connection.
    async fn run<'s, T, F>(&'s self, sql: &str, send: impl FnOnce(&'s tokio_postgres::Client, Statement) -> F) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>> + Send,
    {
        let st = self.client().prepare_cached(sql).await?;
        let client: &tokio_postgres::Client = self.client();
        match self.begin() {
            Some(begin) => {
                let (begun, out) = tokio::join!(begin, send(client, st));
                begun?;
                out
            }
            None => send(client, st).await,
        }
    }

    /// Ends the transaction: `COMMIT` unless the last statement carried it;
    /// nothing to send if no statement ran. Returns the connection.
    pub async fn commit(mut self) -> Result<deadpool_postgres::Client, Error> {
        if self.begun.load(Ordering::SeqCst) && !self.committed.load(Ordering::SeqCst) {
            self.client().batch_execute("COMMIT").await?;
        }
        self.committed.store(true, Ordering::SeqCst);
        Ok(self.client.take().expect("held until the transaction ends"))
    }

    /// Ends the transaction after an error: `ROLLBACK`, and the connection
    /// goes back to the pool (or, if even that fails, is closed).
    pub async fn rollback(self) {
        if self.begun.load(Ordering::SeqCst)
            && !self.committed.load(Ordering::SeqCst)
            && self.client().batch_execute("ROLLBACK").await.is_err()
        {
            return;
        }
        self.committed.store(true, Ordering::SeqCst);
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        let open = self.begun.load(Ordering::SeqCst) && !self.committed.load(Ordering::SeqCst);
        if let Some(client) = self.client.take()
            && open
        {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

impl Conn for Pipelined {
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, Error> {
        self.run(sql, |c, st| async move { c.query(&st, params).await }).await
    }
    async fn query_one(&self, sql: &str, params: Params<'_>) -> Result<Row, Error> {
        self.run(sql, |c, st| async move { c.query_one(&st, params).await }).await
    }
    async fn query_opt(&self, sql: &str, params: Params<'_>) -> Result<Option<Row>, Error> {
        self.run(sql, |c, st| async move { c.query_opt(&st, params).await }).await
    }
    async fn execute(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.run(sql, |c, st| async move { c.execute(&st, params).await }).await
    }
    async fn execute_last(&self, sql: &str, params: Params<'_>) -> Result<u64, Error> {
        self.run(sql, |c, st| async move {
            let (n, committed) = tokio::join!(c.execute(&st, params), c.batch_execute("COMMIT"));
            // A failed statement aborts the transaction, and the server
            // answers the COMMIT with a rollback: the statement's error is
            // the one to report.
            let n = n?;
            committed?;
            self.committed.store(true, Ordering::SeqCst);
            Ok(n)
        })
        .await
    }
}

//! The one seam the SQL code talks through: a connection or transaction that
//! runs statements. On the store's pooled connections statements are prepared
//! once per connection (deadpool's statement cache), saving a round trip per
//! statement; inside a caller's own transaction they are prepared as they run.
//! The store's own transactions ([`Pipelined`]) send `BEGIN` with their first
//! statement and `COMMIT` with their last.

use std::future::Future;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

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
    /// Statements go in the order they were issued, whichever was prepared
    /// first: a claim's scan must follow the promotion issued before it.
    turns: Turns,
}

/// Send order: each statement takes a ticket when issued and is sent when
/// every earlier ticket has been sent or given up.
#[derive(Default)]
struct Turns {
    issued: AtomicU64,
    state: Mutex<(u64, BTreeSet<u64>)>,
    changed: Notify,
}

impl Turns {
    fn take(&self) -> Ticket<'_> {
        Ticket { turns: self, n: self.issued.fetch_add(1, Ordering::SeqCst), done: false }
    }
}

/// A place in [`Turns`]; passes the turn on when used or dropped.
struct Ticket<'a> {
    turns: &'a Turns,
    n: u64,
    done: bool,
}

impl Ticket<'_> {
    async fn wait(&self) {
        loop {
            let changed = self.turns.changed.notified();
            if self.turns.state.lock().expect("turns").0 == self.n {
                return;
            }
            changed.await;
        }
    }

    /// Runs `sent` in this turn: its first poll puts its messages on the
    /// connection's queue, so the turn passes then, not when the answer comes.
    async fn send<T>(mut self, sent: impl Future<Output = T>) -> T {
        let mut sent = std::pin::pin!(sent);
        std::future::poll_fn(|cx| {
            let polled = sent.as_mut().poll(cx);
            self.pass();
            polled
        })
        .await
    }

    fn pass(&mut self) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut state = self.turns.state.lock().expect("turns");
        let (next, passed) = &mut *state;
        passed.insert(self.n);
        while passed.remove(next) {
            *next += 1;
        }
        drop(state);
        self.turns.changed.notify_waiters();
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.pass();
    }
}

impl Pipelined {
    pub fn new(client: deadpool_postgres::Client) -> Self {
        Pipelined { client: Some(client), begun: AtomicBool::new(false), committed: AtomicBool::new(false), turns: Turns::default() }
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
        let ticket = self.turns.take();
        let st = self.client().prepare_cached(sql).await?;
        ticket.wait().await;
        let client: &tokio_postgres::Client = self.client();
        let sent = async {
            match self.begin() {
                Some(begin) => {
                    let (begun, out) = tokio::join!(begin, send(client, st));
                    begun?;
                    out
                }
                None => send(client, st).await,
            }
        };
        ticket.send(sent).await
    }

    /// Sends `COMMIT` after every statement issued before this call, without
    /// waiting for their answers: a transaction whose statements need
    /// nothing from each other's answers commits in the round trip that
    /// runs them (see `claim::claim_at_once`). Statements issued afterwards
    /// run on their own, outside the transaction.
    pub async fn commit_pipelined(&self) -> Result<(), Error> {
        let ticket = self.turns.take();
        ticket.wait().await;
        if !self.begun.load(Ordering::SeqCst) {
            return Ok(());
        }
        ticket.send(self.client().batch_execute("COMMIT")).await?;
        self.committed.store(true, Ordering::SeqCst);
        Ok(())
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
        if self.committed.load(Ordering::SeqCst) {
            return self.execute(sql, params).await;
        }
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

#[cfg(all(test, feature = "testing"))]
mod tests {
    use super::*;

    /// Statements issued together reach the server in the order issued,
    /// even when a later one is prepared already and an earlier one must be
    /// prepared first (a claim's scan issued after a promotion once ran
    /// before it that way, on a connection that had prepared only the scan).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn statements_reach_the_server_in_the_order_issued() {
        let (store, _schema) = crate::testing::fresh_store().await;
        let client = store.pool().get().await.unwrap();
        client.batch_execute("CREATE TABLE turns (n serial, what text)").await.unwrap();
        let second = "INSERT INTO turns (what) VALUES ('second')";
        client.prepare_cached(second).await.unwrap();
        let t = Pipelined::new(client);
        let (a, b) = tokio::join!(t.execute("INSERT INTO turns (what) VALUES ('first')", &[]), t.execute(second, &[]));
        a.unwrap();
        b.unwrap();
        let client = t.commit().await.unwrap();
        let order: Vec<String> = client.query("SELECT what FROM turns ORDER BY n", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(order, ["first", "second"]);
    }
}

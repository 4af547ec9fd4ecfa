//! Push invalidation: [`SessionStore::subscribe`](sessiond_core::SessionStore::subscribe) as
//! `LISTEN` on a connection of its own.
//!
//! The trigger function that bumps the generation (migration 6) also runs
//! `pg_notify('sessiond_generation', <schema of the changed table>)`, so every change that
//! moves the generation is announced as its transaction commits. A feed is one connection,
//! outside the pools (a pooled connection is shared and recycled; a listener must stay put):
//! a task drives it, forwards this deployment's notifications to the feed, and ends with the
//! connection. Dropping the feed ends the task and closes the connection.

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use sessiond_core::{ChangeFeed, StoreError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Client, Config, Connection, NoTls, Socket, Statement};

use crate::{col, pg, TimedOut, OP_TIMEOUT};

/// The channel the trigger function notifies on (migration 6 spells it too).
pub(crate) const CHANNEL: &str = "sessiond_generation";

/// Appended to the store's `application_name` for the feed's connection, so an operator (and
/// the tests) can tell it apart in `pg_stat_activity`.
pub(crate) const APPLICATION_SUFFIX: &str = " listen";

/// A live `LISTEN` on the store's channel.
pub(crate) struct PgFeed {
    client: Client,
    /// `SELECT value FROM generation`, prepared on this connection.
    read_generation: Statement,
    /// One `()` waiting means "changed since the last call"; closed when the connection ends.
    notes: mpsc::Receiver<()>,
    /// Why the connection ended, sent before `notes` closes.
    ended: oneshot::Receiver<StoreError>,
    schema: String,
}

impl std::fmt::Debug for PgFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgFeed")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl ChangeFeed for PgFeed {
    async fn changed(&mut self) -> Result<(), StoreError> {
        // `recv` is cancel-safe: a notification that came while nobody waited stays queued.
        match self.notes.recv().await {
            Some(()) => Ok(()),
            None => Err(self.ended.try_recv().unwrap_or_else(|_| {
                StoreError::Unavailable("the notification connection is closed".into())
            })),
        }
    }

    async fn generation(&mut self) -> Result<u64, StoreError> {
        let read = self.client.query_one(&self.read_generation, &[]);
        let row = tokio::time::timeout(OP_TIMEOUT, read)
            .await
            .map_err(|_| StoreError::unavailable(TimedOut(OP_TIMEOUT)))?
            .map_err(pg)?;
        Ok(col::<i64>(&row, 0)?.max(0) as u64)
    }
}

#[cfg(test)]
impl PgFeed {
    /// The server process behind this feed's connection.
    pub(crate) async fn backend_pid(&self) -> i32 {
        let row = self.client.query_one("SELECT pg_backend_pid()", &[]);
        row.await.unwrap().get(0)
    }
}

/// Opens a connection with `config` (the store's, with its own application name), listens,
/// and returns the feed. Unbounded: the caller bounds it.
pub(crate) async fn subscribe<T>(config: &Config, tls: Option<&T>) -> Result<PgFeed, StoreError>
where
    T: MakeTlsConnect<Socket> + Clone,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await.map_err(pg)?;
            listen(client, connection).await
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls.clone()).await.map_err(pg)?;
            listen(client, connection).await
        }
    }
}

async fn listen<S, T>(client: Client, connection: Connection<S, T>) -> Result<PgFeed, StoreError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (notes_tx, notes) = mpsc::channel(1);
    let (ended_tx, ended) = oneshot::channel();
    let ours = Arc::new(OnceLock::new());
    // Driven from here on: no query is answered before the connection is polled. If this
    // function fails or is cancelled below, `client` is dropped, and so the task ends.
    tokio::spawn(drive(connection, Arc::clone(&ours), notes_tx, ended_tx));
    // The schema the store's tables resolve to on this connection (its `search_path`): the
    // payload the trigger sends for this deployment. Known before `LISTEN`, so every
    // notification is filtered.
    let row = client
        .query_one(
            "SELECT n.nspname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.oid = 'generation'::regclass",
            &[],
        )
        .await
        .map_err(pg)?;
    let schema: String = col(&row, 0)?;
    let _ = ours.set(schema.clone());
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(pg)?;
    let read_generation = client
        .prepare("SELECT value FROM generation WHERE id = 1")
        .await
        .map_err(pg)?;
    Ok(PgFeed {
        client,
        read_generation,
        notes,
        ended,
        schema,
    })
}

/// Drives the connection until it ends (then says why on `ended`) or the feed is dropped.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    ours: Arc<OnceLock<String>>,
    notes: mpsc::Sender<()>,
    ended: oneshot::Sender<StoreError>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let why = loop {
        let message = tokio::select! {
            // The feed is gone: returning drops the connection, which closes its socket (the
            // server ends the backend), even if the server stopped answering.
            () = notes.closed() => return,
            m = std::future::poll_fn(|cx| connection.poll_message(cx)) => m,
        };
        match message {
            Some(Ok(AsyncMessage::Notification(n))) => {
                let mine = ours.get().is_none_or(|s| s == n.payload());
                if n.channel() == CHANNEL && mine {
                    // Full: a change is already waiting to be reported, and one report says
                    // as much as several.
                    let _ = notes.try_send(());
                }
            }
            Some(Ok(_)) => {} // notices
            Some(Err(e)) => break StoreError::unavailable(e),
            None => break StoreError::Unavailable("the notification connection closed".into()),
        }
    };
    let _ = ended.send(why);
}

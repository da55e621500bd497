//! Database connections (tokio-postgres, no TLS: the sidecar runs next to the
//! database). Connection errors never echo the URL, which may hold a password.

use futures_util::StreamExt;
use std::sync::Arc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

use crate::{Error, Result};

impl Error {
    /// A short description safe for logs and /healthz.
    pub fn kind_str(&self) -> String {
        match self {
            Error::Db(e) => match e.as_db_error() {
                Some(d) => format!("{} ({})", d.message(), d.code().code()),
                None => e.to_string(),
            },
            other => other.to_string(),
        }
    }
}

pub async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    client
        .batch_execute("SET application_name = 'killboard-sidecar'")
        .await?;
    Ok(client)
}

/// A connection that LISTENs on `channel` and calls `on_notify` with each
/// notification's payload. Returns when the connection ends.
pub async fn listen(
    url: &str,
    channel: &str,
    on_notify: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<()> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<Option<tokio_postgres::Error>>();
    tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            match msg {
                Ok(AsyncMessage::Notification(n)) => on_notify(n.payload()),
                Ok(_) => {}
                Err(e) => {
                    let _ = done_tx.send(Some(e));
                    return;
                }
            }
        }
        let _ = done_tx.send(None);
    });
    // Identifiers cannot be bound as parameters; the channel is a constant of ours.
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    match (&mut done_rx).await {
        Ok(Some(e)) => Err(e.into()),
        _ => Ok(()),
    }
}

//! One leader per company among the engines sharing a Postgres store: the box that
//! holds the company's session-level advisory lock (`pg_try_advisory_lock`) on a
//! connection of its own. Only the leader runs the company's periodic full sync and
//! reconciliations (each box running them would list Stripe and QuickBooks once per box,
//! on the company's one quota).
//!
//! The lock lives as long as that connection: a leader killed with `kill -9` drops it
//! (the kernel closes the socket, the server ends the session and frees the lock), and
//! the next box to try takes the role. A leader that loses its connection (or whose
//! connection stops answering) steps down at once, before another box can have taken
//! the lock, then tries again. No table, no migration.
//!
//! On SQLite (one box per data dir) the box always leads ([`Leadership::always`]).

use std::time::Duration;

use tokio::sync::watch;
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

/// How often a box that does not lead tries to take the lock (and how long a leader
/// waits for its connection to answer before stepping down).
pub const TRY_EVERY: Duration = Duration::from_secs(1);
/// How often a leader checks its lock's connection still answers.
const ALIVE_EVERY: Duration = Duration::from_secs(3);

/// The first key of the two-key advisory lock: "syncctl leader" (the second is the
/// company's hash), apart from any other use of advisory locks on the database.
const LOCK_SPACE: i32 = 0x5ec1_1ead;

/// Whether this box leads its company now, and the changes of it.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    shared: bool,
    /// [`Leadership::always`]'s sender, kept so its receiver never sees it closed.
    _always: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// The only box there is: it always leads.
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            shared: false,
            _always: Some(std::sync::Arc::new(tx)),
        }
    }

    /// Tries for company `company`'s lock on the database at `url` every [`TRY_EVERY`]
    /// until `cancel` (then the connection closes and the lock is free). An invalid URL
    /// is an error; a database that does not answer is retried (not leading meanwhile).
    pub fn postgres(url: &str, company: &str, cancel: CancellationToken) -> anyhow::Result<Self> {
        let config = super::postgres::parse_url(url)?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(hold(config, company.to_owned(), tx, cancel));
        Ok(Self {
            rx,
            shared: true,
            _always: None,
        })
    }

    /// Whether this box leads its company now.
    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Whether other boxes share the company (Postgres): followers exist.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Waits until leading is `leading` (at once if it is); false when the lock's task
    /// has ended (the engine is stopping).
    pub async fn until(&mut self, leading: bool) -> bool {
        self.rx.wait_for(|l| *l == leading).await.is_ok()
    }
}

/// Takes and holds the lock, reporting each change on `tx`.
async fn hold(
    config: tokio_postgres::Config,
    company: String,
    tx: watch::Sender<bool>,
    cancel: CancellationToken,
) {
    let mut warned = false;
    loop {
        let held = tokio::select! {
            _ = cancel.cancelled() => return,
            h = try_lead(&config, &company, &tx, &cancel) => h,
        };
        tx.send_if_modified(|l| std::mem::replace(l, false));
        match held {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(
                    "store: company {company:?}: the leader lock's connection failed: {e}; trying again"
                );
                warned = true;
            }
            Err(_) => {}
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TRY_EVERY) => {}
        }
    }
}

/// One connection: tries for the lock until it is taken, then holds it while the
/// connection answers. Ends (not leading any more) when the connection fails.
async fn try_lead(
    config: &tokio_postgres::Config,
    company: &str,
    tx: &watch::Sender<bool>,
    cancel: &CancellationToken,
) -> Result<(), tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    let mut connection = tokio::spawn(connection);
    let result = async {
        let take = client
            .prepare("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .await?;
        loop {
            let got: bool = client
                .query_one(&take, &[&LOCK_SPACE, &company])
                .await?
                .get(0);
            if got {
                break;
            }
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(TRY_EVERY) => {}
            }
        }
        tracing::info!("store: this box leads company {company:?} (full sync, reconciliation)");
        tx.send_replace(true);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = tokio::time::sleep(ALIVE_EVERY) => {}
            }
            // A connection that does not answer in time may have lost its session (and
            // the lock) already: step down.
            match tokio::time::timeout(TRY_EVERY, client.simple_query("SELECT 1")).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    tracing::warn!(
                        "store: company {company:?}: the leader lock's connection stopped answering; stepping down"
                    );
                    return Ok(());
                }
            }
        }
    };
    let r = tokio::select! {
        r = result => r,
        // The connection ended under the lock (the server went away).
        _ = &mut connection => Ok(()),
    };
    if tx.send_if_modified(|l| std::mem::replace(l, false)) {
        tracing::info!("store: this box no longer leads company {company:?}");
    }
    connection.abort();
    r
}

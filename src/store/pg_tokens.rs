//! A company's OAuth tokens on the Postgres store, so every box uses the one refresh
//! token the provider still accepts (QuickBooks rotates it on each use and refuses the
//! old one). A box that needs a new access token takes the row's lock
//! ([`PgTokens::lock`], `SELECT … FOR UPDATE`): if another box refreshed meanwhile it
//! uses that token; otherwise it refreshes with the provider while holding the lock,
//! stores the rotated refresh token and commits ([`TokenLock::store`]) before using
//! the new access token. One box at a time refreshes a company; the others wait on
//! the lock and find its token.

use deadpool_postgres::{Object, Pool};

use super::OAuthState;
use super::postgres::PgResult;

/// One company's tokens on the shared store.
#[derive(Clone)]
pub struct PgTokens {
    pool: Pool,
    company: String,
}

/// The row, locked by this box until [`TokenLock::store`] or [`TokenLock::release`] (or
/// the drop, which closes the connection: the database rolls back and frees the lock).
pub struct TokenLock {
    client: Option<Object>,
    company: String,
    pub state: OAuthState,
}

impl PgTokens {
    pub fn new(pool: Pool, company: &str) -> Self {
        Self {
            pool,
            company: company.to_owned(),
        }
    }

    /// The company's tokens, first storing the configured refresh token when the row is
    /// missing or was started from another configured token (the operator
    /// re-authorised: it wins, as on SQLite).
    pub async fn bootstrap(
        &self,
        bootstrap_hash: &str,
        configured_refresh: &str,
        now_ms: i64,
    ) -> PgResult<OAuthState> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO syncctl.oauth_tokens(company, bootstrap_hash, refresh_token, updated_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (company) DO UPDATE SET bootstrap_hash = excluded.bootstrap_hash,
                 refresh_token = excluded.refresh_token, access_token = NULL,
                 access_expires_at = NULL, updated_at = excluded.updated_at
             WHERE oauth_tokens.bootstrap_hash <> excluded.bootstrap_hash",
            &[&self.company, &bootstrap_hash, &configured_refresh, &now_ms],
        )
        .await?;
        let row = c
            .query_one(
                "SELECT bootstrap_hash, refresh_token, access_token, access_expires_at
                   FROM syncctl.oauth_tokens WHERE company = $1",
                &[&self.company],
            )
            .await?;
        Ok(OAuthState {
            bootstrap_hash: row.get(0),
            refresh_token: row.get(1),
            access_token: row.get(2),
            access_expires_at_ms: row.get(3),
        })
    }

    /// Takes the row's lock (waiting while another box holds it, e.g. while it
    /// refreshes) and reads the tokens as they are now.
    pub async fn lock(&self) -> PgResult<TokenLock> {
        let c = self.pool.get().await?;
        let mut lock = TokenLock {
            client: Some(c),
            company: self.company.clone(),
            state: OAuthState::default(),
        };
        let c = lock.client.as_ref().expect("just set");
        c.batch_execute("BEGIN").await?;
        let row = c
            .query_one(
                "SELECT bootstrap_hash, refresh_token, access_token, access_expires_at
                   FROM syncctl.oauth_tokens WHERE company = $1 FOR UPDATE",
                &[&self.company],
            )
            .await?;
        lock.state = OAuthState {
            bootstrap_hash: row.get(0),
            refresh_token: row.get(1),
            access_token: row.get(2),
            access_expires_at_ms: row.get(3),
        };
        Ok(lock)
    }
}

impl TokenLock {
    /// Stores the refreshed tokens and commits (the lock is freed): the rotated refresh
    /// token is on the shared store before the access token is used.
    pub async fn store(mut self, s: &OAuthState, now_ms: i64) -> PgResult<()> {
        let c = self.client.take().expect("held until store or release");
        let done = async {
            c.execute(
                "UPDATE syncctl.oauth_tokens SET refresh_token = $2, access_token = $3,
                        access_expires_at = $4, updated_at = $5 WHERE company = $1",
                &[
                    &self.company,
                    &s.refresh_token,
                    &s.access_token,
                    &s.access_expires_at_ms,
                    &now_ms,
                ],
            )
            .await?;
            c.batch_execute("COMMIT").await
        }
        .await;
        if done.is_err() {
            // Whatever state the transaction is in, the connection does not go back.
            drop(Object::take(c));
        }
        Ok(done?)
    }

    /// Frees the lock, changing nothing.
    pub async fn release(mut self) {
        if let Some(c) = self.client.take()
            && c.batch_execute("ROLLBACK").await.is_err()
        {
            drop(Object::take(c));
        }
    }
}

impl Drop for TokenLock {
    fn drop(&mut self) {
        // Dropped while locked (an error, a cancelled call): the connection is closed,
        // not returned mid-transaction; the database rolls back and frees the row.
        if let Some(c) = self.client.take() {
            drop(Object::take(c));
        }
    }
}

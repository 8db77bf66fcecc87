//! The ClickHouse HTTP interface, blocking (ureq), on the sink's own thread: queries as POST
//! bodies, inserts as `INSERT INTO db.table (columns) FORMAT TabSeparated` with the rows as
//! the body.
//!
//! Only what every server since 18.16 understands is sent: TabSeparated (not RowBinary), the
//! `X-ClickHouse-User`/`X-ClickHouse-Key` headers (ureq's debug logs redact them, and the
//! password never appears in a URL or an error), and the `insert_deduplication_token` setting
//! only when `version()` said the server knows it (22.2 and later).

use std::time::Duration;

use crate::config::ClickHouseConfig;

/// Answers longer than this are cut in error messages: a log line, not a dump.
const MAX_MESSAGE: usize = 300;

/// A failed request: the server's own message (or the transport's), naming the server.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    #[error("{url}: HTTP {status}: {message}")]
    Server { url: String, status: u16, message: String },
    #[error("{url}: {message}")]
    Transport { url: String, message: String },
}

/// A connection pool to one server (ureq's agent) and what it knows about it.
pub(crate) struct Client {
    agent: ureq::Agent,
    url: String,
    user: String,
    password: Option<String>,
    /// `SELECT version()`, major and minor; None until [`Client::check_version`].
    version: Option<(u32, u32)>,
}

impl Client {
    pub(crate) fn new(config: &ClickHouseConfig, password: Option<String>) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(config.timeout))
            .timeout_connect(Some(config.timeout.min(Duration::from_secs(10))))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            agent,
            url: format!("{}/", config.url),
            user: config.user.clone(),
            password,
            version: None,
        }
    }

    /// The server's `version()` as text; remembers whether it knows
    /// `insert_deduplication_token`.
    pub(crate) fn check_version(&mut self) -> Result<String, ClientError> {
        let text = self.query("SELECT version()")?.trim().to_owned();
        let mut parts = text.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        self.version = Some((parts.next().unwrap_or(0), parts.next().unwrap_or(0)));
        Ok(text)
    }

    /// Whether inserts may carry `insert_deduplication_token` (ClickHouse 22.2+).
    pub(crate) fn dedup_tokens(&self) -> bool {
        self.version.is_some_and(|v| v >= (22, 2))
    }

    /// Runs one statement (DDL, a SELECT); returns the answer's body.
    pub(crate) fn query(&self, sql: &str) -> Result<String, ClientError> {
        self.send(self.request(), sql.as_bytes())
    }

    /// Inserts TabSeparated `rows` of `columns` into `table` (`db.name`). With a token (and a
    /// server that knows the setting) a retried block is dropped by the server itself.
    pub(crate) fn insert(
        &self,
        table: &str,
        columns: &str,
        rows: &[u8],
        token: Option<&str>,
    ) -> Result<(), ClientError> {
        let sql = format!("INSERT INTO {table} ({columns}) FORMAT TabSeparated");
        let mut request = self.request().query("query", sql);
        if let Some(token) = token.filter(|_| self.dedup_tokens()) {
            request = request.query("insert_deduplication_token", token);
        }
        self.send(request, rows).map(drop)
    }

    fn request(&self) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let request = self.agent.post(&self.url).header("X-ClickHouse-User", &self.user);
        match &self.password {
            Some(password) => request.header("X-ClickHouse-Key", password),
            None => request,
        }
    }

    fn send(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithBody>,
        body: &[u8],
    ) -> Result<String, ClientError> {
        let transport = |e: ureq::Error| ClientError::Transport {
            url: self.url.trim_end_matches('/').to_owned(),
            message: e.to_string(),
        };
        let mut response = request.send(body).map_err(transport)?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(transport)?;
        if status == 200 {
            return Ok(text);
        }
        let message = text.trim();
        let cut = crate::parse::floor_char_boundary(message, MAX_MESSAGE);
        Err(ClientError::Server {
            url: self.url.trim_end_matches('/').to_owned(),
            status,
            message: message[..cut].to_owned(),
        })
    }
}

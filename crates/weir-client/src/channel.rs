//! The worker channel (`GET /v1/workers/connect`, docs/design/worker-channel.md):
//! one WebSocket over which a worker names its queues and grants credit, the server
//! pushes leased tasks and cancels, and the worker settles in batches.
//!
//! This module speaks the protocol and nothing more: [`Client::open_channel`]
//! upgrades, says `hello` and reads `welcome`, then hands back a
//! [`ChannelSender`] and a [`ChannelReceiver`] (the two halves, so a worker can
//! read while it writes). What to grant, when to settle and what to do when the
//! channel drops is the worker's (weir-worker's pool).

use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::types::decode_lease;
use crate::{error_from_response, AckItem, Client, Error, FailItem, LeaseBatch, SettleOutcome};

/// Longest message the client reads from the server (a push of 1,000 tasks with
/// payloads of a few KiB each fits; the server's own request limit is 1 MiB by
/// default, and its task payloads are bounded by it).
pub const CHANNEL_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest the upgrade and the `hello`/`welcome` exchange may take.
pub const CHANNEL_OPEN_TIMEOUT_MS: u64 = 10_000;

/// A channel's connection: TCP, or TLS over TCP for an `https://` server.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Ws = WebSocketStream<Box<dyn Io>>;

/// What a worker says in `hello`.
#[derive(Clone, Debug, Serialize)]
pub struct Hello<'a> {
    /// The queues it takes (1..=16 on the server).
    pub queues: &'a [String],
    /// Its name, shown on leases as over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<&'a str>,
    /// Credit granted with the hello (0..=1000).
    pub credit: u32,
}

/// The server's answer to `hello`.
#[derive(Debug, Deserialize)]
pub struct Welcome {
    /// The queues the channel serves.
    pub queues: Vec<String>,
    /// The queues refused (a queue-limited key, a bad name), each with the error.
    #[serde(default, deserialize_with = "refused")]
    pub refused: Vec<(String, Error)>,
    /// The most credit the server holds for a channel.
    pub credit_max: u32,
    /// How often the server pings.
    pub ping_ms: u64,
}

/// One release in a settle: a leased task handed back unstarted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseItem {
    pub id: String,
    pub lease_id: String,
}

/// The outcomes of one `settle`, each list in the order it was sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Settled {
    pub seq: u64,
    pub acks: Vec<SettleOutcome>,
    pub fails: Vec<SettleOutcome>,
    pub releases: Vec<SettleOutcome>,
    /// Set when the server could not take the settle as a whole (its store
    /// was unavailable or busy: the error is what HTTP would answer, 5xx or
    /// 429); the lists are then empty. Its items are still to be sent again
    /// (a repeat is answered with the task's state or a 409, never applied
    /// twice). The channel stays open.
    #[serde(deserialize_with = "settle_error")]
    pub error: Option<Error>,
}

/// A message from the server after `welcome`.
#[derive(Debug)]
pub enum Pushed {
    /// Leased tasks, one credit each (tasks this client could not decode are set
    /// apart, as from a lease answer: fail them without retry).
    Tasks(LeaseBatch),
    /// A cancel was requested for a task this channel holds.
    Cancel { id: String, lease_id: String },
    /// The outcomes of a settle, once durable.
    Settled(Settled),
    /// The server's protocol error (or an error it met settling); the channel
    /// closes after it.
    Error(Error),
}

/// The writing half of an open channel.
pub struct ChannelSender {
    sink: SplitSink<Ws, Message>,
}

/// The reading half of an open channel.
pub struct ChannelReceiver {
    frames: SplitStream<Ws>,
}

impl Client {
    /// Opens a worker channel: upgrades `GET /v1/workers/connect` (with the
    /// client's API key), sends `hello` and waits for `welcome`.
    ///
    /// An `https://` server is reached over `wss://`, trusting what the
    /// client's requests trust (Mozilla's roots and the builder's CA
    /// certificates).
    ///
    /// Errors: an answer other than `101` mapped as any HTTP answer is (a server
    /// without the route says 404, an older one 501 over TLS), a TLS handshake
    /// or connection that fails or closes before `welcome`.
    pub async fn open_channel(
        &self,
        hello: &Hello<'_>,
    ) -> Result<(ChannelSender, ChannelReceiver, Welcome), Error> {
        let open = async {
            let (tls, rest) = match self.base_url().split_once("://") {
                Some(("http", rest)) => (false, rest),
                Some(("https", rest)) => (true, rest),
                _ => {
                    return Err(channel_error(
                        "the server's URL is neither http:// nor https://",
                    ))
                }
            };
            let (hostport, prefix) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let scheme = if tls { "wss" } else { "ws" };
            let mut req = format!("{scheme}://{hostport}{prefix}/v1/workers/connect")
                .into_client_request()
                .map_err(ws_error)?;
            if let Some(auth) = &self.auth {
                req.headers_mut()
                    .insert(tungstenite::http::header::AUTHORIZATION, auth.clone());
            }
            let tcp = TcpStream::connect(hostport)
                .await
                .map_err(|e| channel_error(&format!("connecting to {hostport}: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn Io> = if tls {
                let host = req.uri().host().unwrap_or_default();
                // `[::1]` in a URL is `::1` to TLS.
                let host = host.trim_start_matches('[').trim_end_matches(']');
                Box::new(self.tls_connect(host, tcp).await?)
            } else {
                Box::new(tcp)
            };
            let config = WebSocketConfig::default()
                .max_message_size(Some(CHANNEL_MESSAGE_BYTES_MAX))
                .max_frame_size(Some(CHANNEL_MESSAGE_BYTES_MAX));
            let (ws, _) = tokio_tungstenite::client_async_with_config(req, io, Some(config))
                .await
                .map_err(ws_error)?;
            let (sink, frames) = ws.split();
            let mut tx = ChannelSender { sink };
            let mut rx = ChannelReceiver { frames };
            tx.send(&OutHello {
                type_: "hello",
                hello,
            })
            .await?;
            match rx.frame().await? {
                Some(text) => {
                    let kind = kind_of(&text)?;
                    match kind.as_str() {
                        "welcome" => {
                            let welcome: Welcome =
                                serde_json::from_str(&text).map_err(|e| decode_error(&e))?;
                            Ok((tx, rx, welcome))
                        }
                        "error" => Err(problem_error(&text)),
                        other => Err(channel_error(&format!(
                            "the server answered hello with {other:?}"
                        ))),
                    }
                }
                None => Err(channel_error("the server closed the channel at hello")),
            }
        };
        tokio::time::timeout(Duration::from_millis(CHANNEL_OPEN_TIMEOUT_MS), open)
            .await
            .unwrap_or_else(|_| Err(channel_error("opening the channel timed out")))
    }

    /// A TLS session to `host` over `tcp`, trusting what the client's HTTP
    /// requests trust: Mozilla's roots and the client's own CA certificates.
    async fn tls_connect(
        &self,
        host: &str,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for der in self.ca_certs.iter() {
            roots
                .add(der.clone())
                .map_err(|e| channel_error(&format!("a CA certificate: {e}")))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| channel_error(&format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| channel_error(&format!("{host:?} as a TLS server name: {e}")))?;
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| channel_error(&format!("TLS with {host}: {e}")))
    }
}

impl ChannelSender {
    /// `credit`: grants `n` more tasks (1..=1000; the server holds at most
    /// `credit_max` in all).
    pub async fn credit(&mut self, n: u32) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Credit {
            #[serde(rename = "type")]
            type_: &'static str,
            n: u32,
        }
        self.send(&Credit { type_: "credit", n }).await
    }

    /// `settle`: acks, fails and releases (1..=1000 items in all); the server
    /// answers with [`Pushed::Settled`] of the same `seq` once they are durable.
    pub async fn settle(
        &mut self,
        seq: u64,
        acks: &[AckItem],
        fails: &[FailItem],
        releases: &[ReleaseItem],
    ) -> Result<(), Error> {
        #[derive(Serialize)]
        struct Settle<'a> {
            #[serde(rename = "type")]
            type_: &'static str,
            seq: u64,
            acks: &'a [AckItem],
            fails: &'a [FailItem],
            releases: &'a [ReleaseItem],
        }
        self.send(&Settle {
            type_: "settle",
            seq,
            acks,
            fails,
            releases,
        })
        .await
    }

    /// `bye`: the server stops pushing; what the worker holds it still settles.
    pub async fn bye(&mut self) -> Result<(), Error> {
        self.sink
            .send(Message::text(r#"{"type":"bye"}"#))
            .await
            .map_err(ws_error)
    }

    /// Sends a close frame and flushes it.
    pub async fn close(&mut self) {
        let _ = self.sink.close().await;
    }

    async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), Error> {
        let text = serde_json::to_string(msg).map_err(|e| decode_error(&e))?;
        self.sink.send(Message::text(text)).await.map_err(ws_error)
    }
}

impl ChannelReceiver {
    /// The next message; `None` once the channel is closed. Pings are answered
    /// by the WebSocket layer on the next write or read.
    pub async fn next(&mut self) -> Option<Result<Pushed, Error>> {
        let text = match self.frame().await {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => return Some(Err(e)),
        };
        Some(parse_pushed(&text))
    }

    /// The next text frame, skipping control frames.
    async fn frame(&mut self) -> Result<Option<String>, Error> {
        loop {
            match self.frames.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(t.as_str().to_owned())),
                Some(Ok(Message::Binary(_))) => {
                    return Err(channel_error("the server sent a binary frame"))
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(ws_error(e)),
            }
        }
    }
}

/// Reads one server message.
fn parse_pushed(text: &str) -> Result<Pushed, Error> {
    match kind_of(text)?.as_str() {
        "tasks" => decode_lease(text.as_bytes())
            .map(Pushed::Tasks)
            .map_err(|e| decode_error(&e)),
        "cancel" => {
            #[derive(Deserialize)]
            struct Cancel {
                id: String,
                lease_id: String,
            }
            let c: Cancel = serde_json::from_str(text).map_err(|e| decode_error(&e))?;
            Ok(Pushed::Cancel {
                id: c.id,
                lease_id: c.lease_id,
            })
        }
        "settled" => serde_json::from_str(text)
            .map(Pushed::Settled)
            .map_err(|e| decode_error(&e)),
        "error" => Ok(Pushed::Error(problem_error(text))),
        other => Err(channel_error(&format!(
            "the server sent an unknown message {other:?}"
        ))),
    }
}

#[derive(Serialize)]
struct OutHello<'a, 'b> {
    #[serde(rename = "type")]
    type_: &'static str,
    #[serde(flatten)]
    hello: &'a Hello<'b>,
}

fn kind_of(text: &str) -> Result<String, Error> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        type_: String,
    }
    serde_json::from_str::<Kind>(text)
        .map(|k| k.type_)
        .map_err(|e| decode_error(&e))
}

/// An `error` message's problem as the error HTTP would have given.
fn problem_error(text: &str) -> Error {
    #[derive(Deserialize)]
    struct ErrorMsg {
        #[serde(default)]
        problem: Value,
    }
    match serde_json::from_str::<ErrorMsg>(text) {
        Ok(m) => from_problem(&m.problem),
        Err(e) => decode_error(&e),
    }
}

fn from_problem(problem: &Value) -> Error {
    let status = problem.get("status").and_then(Value::as_u64).unwrap_or(500) as u16;
    error_from_response(status, None, problem.to_string().as_bytes())
}

fn settle_error<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Error>, D::Error> {
    let problem = Option::<Value>::deserialize(d)?;
    Ok(problem.filter(|p| !p.is_null()).map(|p| from_problem(&p)))
}

fn refused<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(String, Error)>, D::Error> {
    #[derive(Deserialize)]
    struct Refused {
        queue: String,
        #[serde(default)]
        problem: Value,
    }
    let list: Vec<Refused> = Vec::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(|r| {
            let e = from_problem(&r.problem);
            (r.queue, e)
        })
        .collect())
}

fn channel_error(detail: &str) -> Error {
    Error::Channel {
        detail: detail.to_owned(),
    }
}

fn decode_error(e: &serde_json::Error) -> Error {
    channel_error(&format!("a message this client does not understand: {e}"))
}

/// A WebSocket failure: an HTTP answer to the upgrade is mapped as any HTTP
/// answer; anything else is a transport failure of the channel.
fn ws_error(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::Http(resp) => {
            let retry_after = resp
                .headers()
                .get(tungstenite::http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.body().clone().unwrap_or_default();
            error_from_response(resp.status().as_u16(), retry_after.as_deref(), &body)
        }
        other => channel_error(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_messages_parse() {
        let t = r#"{"type":"tasks","tasks":[{"id":"a","lease_id":"l","kind":"k","payload":1,"attempt":1}]}"#;
        match parse_pushed(t).unwrap() {
            Pushed::Tasks(b) => {
                assert_eq!(b.tasks.len(), 1);
                assert_eq!(b.tasks[0].lease_id, "l");
            }
            other => panic!("{other:?}"),
        }
        match parse_pushed(r#"{"type":"cancel","id":"a","lease_id":"l"}"#).unwrap() {
            Pushed::Cancel { id, lease_id } => {
                assert_eq!((id.as_str(), lease_id.as_str()), ("a", "l"))
            }
            other => panic!("{other:?}"),
        }
        let s = r#"{"type":"settled","seq":7,"acks":[{"id":"a","ok":true,"state":"completed"}],"fails":[],"releases":[{"id":"b","ok":false,"status":409,"error":"stale"}]}"#;
        match parse_pushed(s).unwrap() {
            Pushed::Settled(s) => {
                assert_eq!(s.seq, 7);
                assert!(s.acks[0].ok);
                assert!(!s.releases[0].ok);
            }
            other => panic!("{other:?}"),
        }
        let e = r#"{"type":"error","problem":{"type":"urn:weir:problem:conflict","status":409,"detail":"x"}}"#;
        assert!(matches!(
            parse_pushed(e).unwrap(),
            Pushed::Error(Error::Conflict { .. })
        ));
        assert!(matches!(
            parse_pushed(r#"{"type":"what"}"#),
            Err(Error::Channel { .. })
        ));
        assert!(parse_pushed("not json").is_err());
    }

    #[test]
    fn welcome_reads_refused_queues_as_errors() {
        let w: Welcome = serde_json::from_str(
            r#"{"type":"welcome","queues":["a"],"refused":[{"queue":"b","problem":{"status":403,"type":"urn:weir:problem:forbidden","detail":"no"}}],"credit_max":1000,"ping_ms":20000}"#,
        )
        .unwrap();
        assert_eq!(w.queues, ["a"]);
        assert_eq!(w.refused.len(), 1);
        assert!(matches!(
            &w.refused[0].1,
            Error::Invalid { status: 403, .. }
        ));
    }
}

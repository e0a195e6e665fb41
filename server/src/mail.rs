//! Outgoing email over SMTP (`AEGIS_SMTP_URL`, `AEGIS_SMTP_FROM`), with `lettre`:
//! email channels ([`crate::channels::email`]) and invitations ([`crate::orgs`]).

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// The SMTP relay and the sender, when configured.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

/// Why the SMTP settings are unusable (never echoes the URL: it may hold a password).
#[derive(Debug)]
pub struct BadSmtp {
    pub var: &'static str,
    pub reason: &'static str,
}

impl Mailer {
    /// `smtp://` (plain, or `?tls=required` for STARTTLS) or `smtps://`, with optional
    /// `user:password@`; `from` a mailbox such as `AEGIS <aegis@example.com>`.
    pub fn new(url: &str, from: &str, timeout: std::time::Duration) -> Result<Self, BadSmtp> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|_| BadSmtp {
                var: "AEGIS_SMTP_URL",
                reason: "expected smtp://[user:pass@]host[:port][?tls=required] or smtps://…",
            })?
            .timeout(Some(timeout))
            .build();
        let from = from.parse().map_err(|_| BadSmtp {
            var: "AEGIS_SMTP_FROM",
            reason: "expected a mailbox such as AEGIS <aegis@example.com>",
        })?;
        Ok(Self { transport, from })
    }

    /// Sends one plain-text message to `to` (several are each a Bcc: they do not see each other).
    pub async fn send(&self, to: &[Mailbox], subject: &str, text: String) -> Result<(), String> {
        if to.is_empty() {
            return Ok(());
        }
        let mut message = Message::builder().from(self.from.clone()).subject(subject);
        if let [only] = to {
            message = message.to(only.clone());
        } else {
            // Several: each a Bcc (lettre leaves the header out), none sees the others.
            for rcpt in to {
                message = message.bcc(rcpt.clone());
            }
        }
        let message = message
            .header(ContentType::TEXT_PLAIN)
            .body(text)
            .map_err(|_| "the email could not be built".to_owned())?;
        self.transport.send(message).await.map(|_| ()).map_err(|e| {
            let kind = if e.is_timeout() {
                "the SMTP server did not answer in time"
            } else if e.is_permanent() {
                "the SMTP server refused the message"
            } else if e.is_transient() {
                "the SMTP server deferred the message"
            } else {
                "could not reach the SMTP server"
            };
            kind.to_owned()
        })
    }
}

//! Email: templates rendered into a text and an HTML part, sent over a pooled SMTP transport
//! (lettre), or written to `<data dir>/mail` when no SMTP server is configured.

use lettre::{
    AsyncFileTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor,
    message::{
        Mailbox, MultiPart,
        header::{Header, HeaderName, HeaderValue},
    },
    transport::smtp::PoolConfig,
};
use minijinja::Environment;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::{settings::NotifySettings, unsubscribe::OneClick};

/// Every template: `<name>.subject.txt`, `<name>.txt` and `<name>.html`.
const TEMPLATES: &[(&str, &str)] = &[
    ("layout.html", include_str!("templates/layout.html")),
    (
        "welcome.subject.txt",
        include_str!("templates/welcome.subject.txt"),
    ),
    ("welcome.txt", include_str!("templates/welcome.txt")),
    ("welcome.html", include_str!("templates/welcome.html")),
    (
        "verification_result.subject.txt",
        include_str!("templates/verification_result.subject.txt"),
    ),
    (
        "verification_result.txt",
        include_str!("templates/verification_result.txt"),
    ),
    (
        "verification_result.html",
        include_str!("templates/verification_result.html"),
    ),
    (
        "payout_receipt.subject.txt",
        include_str!("templates/payout_receipt.subject.txt"),
    ),
    (
        "payout_receipt.txt",
        include_str!("templates/payout_receipt.txt"),
    ),
    (
        "payout_receipt.html",
        include_str!("templates/payout_receipt.html"),
    ),
    (
        "reverification_reminder.subject.txt",
        include_str!("templates/reverification_reminder.subject.txt"),
    ),
    (
        "reverification_reminder.txt",
        include_str!("templates/reverification_reminder.txt"),
    ),
    (
        "reverification_reminder.html",
        include_str!("templates/reverification_reminder.html"),
    ),
    (
        "weekly_digest.subject.txt",
        include_str!("templates/weekly_digest.subject.txt"),
    ),
    (
        "weekly_digest.txt",
        include_str!("templates/weekly_digest.txt"),
    ),
    (
        "weekly_digest.html",
        include_str!("templates/weekly_digest.html"),
    ),
];

pub const TEMPLATE_NAMES: &[&str] = &[
    "welcome",
    "verification_result",
    "payout_receipt",
    "reverification_reminder",
    "weekly_digest",
];

/// A rendered email, before addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Loads the templates once; auto-escaping follows the file extension (HTML only).
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in TEMPLATES {
        env.add_template(name, source)
            .expect("built-in templates parse");
    }
    env
}

pub fn render(env: &Environment<'_>, template: &str, vars: &Value) -> Result<Rendered, String> {
    if !TEMPLATE_NAMES.contains(&template) {
        return Err(format!("no email template {template:?}"));
    }
    let render = |suffix: &str| {
        env.get_template(&format!("{template}.{suffix}"))
            .and_then(|t| t.render(minijinja::value::Serde(vars)))
            .map_err(|e| format!("rendering {template}.{suffix}: {e}"))
    };
    Ok(Rendered {
        subject: render("subject.txt")?.trim().to_owned(),
        text: render("txt")?,
        html: render("html")?,
    })
}

/// `List-Unsubscribe` (RFC 2369): one-step unsubscribe links mail clients show.
#[derive(Clone)]
struct ListUnsubscribe(String);

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058): the client may POST to the
/// https link itself, without opening a page.
#[derive(Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribe(s.to_owned()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(ListUnsubscribePost)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".into())
    }
}

/// How a send ended.
#[derive(Debug)]
pub enum MailOutcome {
    Sent,
    Retry(String),
    Failed(String),
    /// Not sent: every connection stayed busy for the whole wait. Nothing went wrong; the
    /// delivery continues later.
    Busy,
}

enum Transport {
    Smtp(AsyncSmtpTransport<Tokio1Executor>),
    File(AsyncFileTransport<Tokio1Executor>),
}

/// Sends hold one of `SmtpPool::connections` permits. lettre's pool opens a new connection
/// whenever none is idle and closes what it cannot keep, so without the cap every send beyond
/// the pool's size connected, greeted and quit per message (and 100 at once overflowed a local
/// server's listen backlog); with it every send reuses a connection.
pub struct Mailer {
    transport: Transport,
    from: Mailbox,
    templates: Environment<'static>,
    in_flight: Semaphore,
    wait: std::time::Duration,
    one_click: Option<OneClick>,
}

/// One email to build and send.
pub struct Outgoing<'a> {
    pub to: &'a str,
    /// Stable per delivery: the Message-ID's local part, so a repeat is the same message.
    pub send_id: &'a str,
    pub template: &'a str,
    pub vars: &'a Value,
}

impl Mailer {
    pub fn new(settings: &NotifySettings) -> Result<Self, String> {
        let from: Mailbox = settings
            .mail_from
            .parse()
            .map_err(|e| format!("GROUNDCREW_MAIL_FROM: {e}"))?;
        let transport = match &settings.smtp_url {
            Some(url) => Transport::Smtp(
                AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
                    // The URL carries credentials: never echo it.
                    .map_err(|e| format!("GROUNDCREW_SMTP_URL: {e}"))?
                    .pool_config(PoolConfig::new().max_size(settings.smtp_pool.connections as u32))
                    .build(),
            ),
            None => {
                let dir = settings.data_dir.join("mail");
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("GROUNDCREW_DATA_DIR: {}: {e}", dir.display()))?;
                Transport::File(AsyncFileTransport::new(dir))
            }
        };
        Ok(Mailer {
            transport,
            from,
            templates: environment(),
            in_flight: Semaphore::new(settings.smtp_pool.connections),
            wait: settings.smtp_pool.wait,
            one_click: settings.one_click.clone(),
        })
    }

    /// The signed one-click link to the API (see `unsubscribe`), or without
    /// `GROUNDCREW_PUBLIC_URL` a `mailto:` to the sender with the user's id in the subject,
    /// which nothing here reads: whoever runs that mailbox suppresses the address by hand.
    pub fn unsubscribe_url(&self, user_id: uuid::Uuid, notification_id: uuid::Uuid) -> String {
        match &self.one_click {
            Some(one_click) => one_click.url(notification_id),
            None => format!("mailto:{}?subject=unsubscribe%20{user_id}", self.from.email),
        }
    }

    /// The message as it goes on the wire.
    pub fn build(&self, email: &Outgoing<'_>, unsubscribe_url: &str) -> Result<Message, String> {
        let to: Mailbox = email
            .to
            .parse()
            .map_err(|e| format!("bad address {:?}: {e}", email.to))?;
        let rendered = render(&self.templates, email.template, email.vars)?;
        let mut message = Message::builder();
        if self.one_click.is_some() {
            message = message.header(ListUnsubscribePost);
        }
        message
            .from(self.from.clone())
            .to(to)
            .subject(rendered.subject)
            .message_id(Some(format!(
                "<{}@{}>",
                email.send_id,
                self.from.email.domain()
            )))
            .header(ListUnsubscribe(format!("<{unsubscribe_url}>")))
            .multipart(MultiPart::alternative_plain_html(
                rendered.text,
                rendered.html,
            ))
            .map_err(|e| format!("building the message: {e}"))
    }

    pub async fn send(&self, message: Message) -> MailOutcome {
        let Ok(permit) = tokio::time::timeout(self.wait, self.in_flight.acquire()).await else {
            return MailOutcome::Busy;
        };
        let _permit = permit.expect("never closed");
        match &self.transport {
            Transport::Smtp(smtp) => match smtp.send(message).await {
                Ok(_) => MailOutcome::Sent,
                Err(e) if e.is_permanent() => MailOutcome::Failed(format!("SMTP: {e}")),
                Err(e) => MailOutcome::Retry(format!("SMTP: {e}")),
            },
            Transport::File(file) => match file.send(message).await {
                Ok(_) => MailOutcome::Sent,
                Err(e) => MailOutcome::Retry(format!("mail file: {e}")),
            },
        }
    }
}

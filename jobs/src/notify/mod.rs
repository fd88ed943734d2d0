//! The notify family: push (APNs, FCM) and email (SMTP), honouring preferences and quiet hours.
//!
//! Every family notifies through [`notify`] / [`notify_many`], inside its own transaction: the
//! notification row and its delivery job commit with the change that caused them.

pub mod apns;
mod deliver;
pub mod digest;
pub mod email;
pub mod fcm;
mod http2;
pub mod preferences;
pub mod push;
pub mod settings;
pub mod unsubscribe;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{outbox::JobTx, queue::Queue, settings::ConfigError};

pub use deliver::{BATCH as DELIVER_BATCH, Deliver, DeliverBatch};
pub use digest::SendWeeklyDigests;

crate::queue_jobs! {
    /// Push and email delivery.
    pub enum NotifyJob for Queue::Notify {
        Deliver(Deliver),
        DeliverBatch(DeliverBatch),
        SendWeeklyDigests(SendWeeklyDigests),
    }
}

/// The provider clients every delivery shares (connections, cached tokens, templates).
/// A provider without credentials is `None`: its deliveries are skipped.
pub struct Providers {
    pub apns: Option<apns::ApnsClient>,
    pub fcm: Option<fcm::FcmClient>,
    pub mailer: email::Mailer,
}

impl Providers {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(settings::NotifySettings::from_env()?).map_err(|message| ConfigError {
            variable: "GROUNDCREW_APNS_* / GROUNDCREW_FCM_* / GROUNDCREW_SMTP_URL".into(),
            message,
        })
    }

    pub fn new(settings: settings::NotifySettings) -> Result<Self, String> {
        Ok(Providers {
            mailer: email::Mailer::new(&settings)?,
            apns: settings.apns.map(apns::ApnsClient::new).transpose()?,
            fcm: settings.fcm.map(fcm::FcmClient::new).transpose()?,
        })
    }
}

/// What a user can switch on and off (`/v1/me/notification-preferences`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    Social,
    Picks,
    Payments,
    Verification,
    Marketing,
}

impl Category {
    pub const ALL: [Category; 5] = [
        Category::Social,
        Category::Picks,
        Category::Payments,
        Category::Verification,
        Category::Marketing,
    ];

    pub fn parse(name: &str) -> Option<Category> {
        Category::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Category::Social => "social",
            Category::Picks => "picks",
            Category::Payments => "payments",
            Category::Verification => "verification",
            Category::Marketing => "marketing",
        }
    }
}

/// An email sent with a notification, rendered from a named template with these variables.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EmailSpec {
    /// `welcome`, `verification_result`, `payout_receipt`, `reverification_reminder`,
    /// `weekly_digest`.
    pub template: String,
    pub vars: serde_json::Value,
}

/// One notification to one user. Push goes to every enabled device; email only when set.
#[derive(Clone, Debug)]
pub struct Notification {
    pub user_id: Uuid,
    pub category: Category,
    pub title: String,
    pub body: String,
    pub data: serde_json::Value,
    pub push: bool,
    pub email: Option<EmailSpec>,
}

impl Notification {
    pub fn new(
        user_id: Uuid,
        category: Category,
        title: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        Notification {
            user_id,
            category,
            title: title.into(),
            body: body.into(),
            data: serde_json::json!({}),
            push: true,
            email: None,
        }
    }

    pub fn data(mut self, data: serde_json::Value) -> Self {
        self.data = data;
        self
    }

    pub fn email(mut self, template: &str, vars: serde_json::Value) -> Self {
        self.email = Some(EmailSpec {
            template: template.to_owned(),
            vars,
        });
        self
    }

    /// Email only, no push (welcome, digests).
    pub fn without_push(mut self) -> Self {
        self.push = false;
        self
    }
}

/// Records a notification and enqueues its delivery in the caller's transaction.
pub async fn notify(tx: &mut JobTx, notification: Notification) -> Result<Uuid, sqlx::Error> {
    Ok(notify_many(tx, vec![notification]).await?[0])
}

/// Records many notifications with one statement and enqueues their deliveries.
pub async fn notify_many(
    tx: &mut JobTx,
    notifications: Vec<Notification>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    if notifications.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<Uuid> = notifications.iter().map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "INSERT INTO notifications (id, user_id, category, title, body, data, push, email)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                              $6::jsonb[], $7::bool[], $8::jsonb[])",
    )
    .bind(&ids)
    .bind(notifications.iter().map(|n| n.user_id).collect::<Vec<_>>())
    .bind(
        notifications
            .iter()
            .map(|n| n.category.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        notifications
            .iter()
            .map(|n| n.title.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        notifications
            .iter()
            .map(|n| n.body.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        notifications
            .iter()
            .map(|n| n.data.clone())
            .collect::<Vec<_>>(),
    )
    .bind(notifications.iter().map(|n| n.push).collect::<Vec<_>>())
    .bind(
        notifications
            .iter()
            .map(|n| {
                n.email
                    .as_ref()
                    .map(|e| serde_json::to_value(e).expect("email spec serializes"))
            })
            .collect::<Vec<_>>(),
    )
    .execute(tx.conn())
    .await?;
    // Bulk sends go in batches: the delivery bookkeeping's statements run per batch instead of
    // per notification. The jobs say the notifications are new (`first_delivery`): nothing has
    // delivered them, so a job's first run need not look for delivery rows.
    if let [notification_id] = ids[..] {
        tx.enqueue(&Deliver {
            notification_id,
            first_delivery: true,
        })
        .await?;
    } else {
        let batches: Vec<DeliverBatch> = ids
            .chunks(deliver::BATCH)
            .map(|chunk| DeliverBatch {
                notification_ids: chunk.to_vec(),
                first_delivery: true,
            })
            .collect();
        tx.enqueue_many(&batches).await?;
    }
    Ok(ids)
}

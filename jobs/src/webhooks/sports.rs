//! The sports-data provider's `event.result`: handed to the picks family's shared
//! `record_result`, which settles the game (the ops route uses the same function).

use serde::Deserialize;

use super::InboxEvent;
use crate::{
    job::JobError,
    outbox::JobTx,
    picks::{EventRef, RecordError, RecordOutcome, events::ResultStatus, record_result},
};

#[derive(Deserialize)]
struct ResultData {
    external_id: String,
    status: ResultStatus,
    home_score: Option<i32>,
    away_score: Option<i32>,
}

pub(super) async fn apply_result(
    tx: &mut JobTx,
    event: &InboxEvent,
) -> Result<&'static str, JobError> {
    let Ok(data) = serde_json::from_value::<ResultData>(event.body["data"].clone()) else {
        return Ok("invalid_payload");
    };
    match record_result(
        tx,
        EventRef::External(data.external_id),
        data.status,
        data.home_score,
        data.away_score,
    )
    .await
    {
        Ok(RecordOutcome::Settling { .. }) => Ok("settling"),
        Ok(RecordOutcome::Unchanged { .. }) => Ok("unchanged"),
        // Recorded on the inbox row, where ops can see which results did not apply.
        Err(RecordError::NotFound) => Ok("unknown_event"),
        Err(RecordError::Invalid(_)) => Ok("invalid_result"),
        Err(RecordError::Db(e)) => Err(e.into()),
    }
}

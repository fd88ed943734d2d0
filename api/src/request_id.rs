//! `X-Request-Id`: taken from the client when sane, generated (UUIDv7) otherwise, echoed on the
//! response, and carried into every job the request enqueues.

use poem::{
    Endpoint, FromRequest, IntoResponse, Request, RequestBody, Response, http::HeaderValue,
};

pub const HEADER: &str = "x-request-id";
const MAX_LEN: usize = 128;

#[derive(Clone, Debug)]
pub struct RequestId(pub String);

impl RequestId {
    fn from_header(value: Option<&HeaderValue>) -> Self {
        let given = value
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= MAX_LEN)
            .filter(|v| v.bytes().all(|b| b.is_ascii_graphic()));
        RequestId(
            given
                .map(str::to_owned)
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        )
    }
}

pub async fn assign<E: Endpoint>(ep: E, mut req: Request) -> poem::Result<Response> {
    let id = RequestId::from_header(req.headers().get(HEADER));
    req.extensions_mut().insert(id.clone());
    let span = tracing::info_span!("request", request_id = %id.0, method = %req.method(), path = %req.uri().path());
    let mut resp = tracing::Instrument::instrument(ep.call(req), span)
        .await
        .map(IntoResponse::into_response)
        .unwrap_or_else(|e| e.into_response());
    if let Ok(value) = HeaderValue::from_str(&id.0) {
        resp.headers_mut().insert(HEADER, value);
    }
    Ok(resp)
}

impl<'a> FromRequest<'a> for RequestId {
    async fn from_request(req: &'a Request, _body: &mut RequestBody) -> poem::Result<Self> {
        Ok(req
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(|| RequestId::from_header(req.headers().get(HEADER))))
    }
}

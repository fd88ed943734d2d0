//! Probes and metrics, served by the API process itself.

use groundcrew_jobs::telemetry;
use poem::web::Data;
use poem_openapi::{OpenApi, payload::PlainText};

use crate::{ApiState, Tag, error::ApiError, route_error};

pub struct ServiceApi;

route_error!(
    /// `/readyz` while a dependency is down.
    NotReady: 503
);

#[OpenApi(tag = "Tag::Service")]
impl ServiceApi {
    /// Liveness: 200 while the process lives.
    #[oai(path = "/healthz", method = "get", operation_id = "healthz")]
    async fn healthz(&self) -> PlainText<String> {
        PlainText("ok".into())
    }

    /// Readiness: 200 when Postgres and Redis answer, else 503 naming the one that does not.
    #[oai(path = "/readyz", method = "get", operation_id = "readyz")]
    async fn readyz(&self, state: Data<&ApiState>) -> Result<PlainText<String>, NotReady> {
        telemetry::readiness(&state.services)
            .await
            .map_err(ApiError::unavailable)?;
        Ok(PlainText("ready".into()))
    }

    /// Prometheus metrics of this process (HTTP requests, enqueues, queue depths).
    #[oai(path = "/metrics", method = "get", operation_id = "metrics")]
    async fn metrics(&self) -> PlainText<String> {
        PlainText(telemetry::metrics().render())
    }
}

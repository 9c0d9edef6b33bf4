//! What the bridge offers over MCP: tools and resources, each a thin face of the API.
//!
//! Tools take the same arguments as the API's bodies and go through the same validation, so a
//! bad argument gets the same stable code (`invalid_checksum_format`, `url_not_allowed`, ...)
//! as `POST /v1/runs` would give; it comes back as a tool result with `isError`, as MCP wants
//! for failures a caller should see, with `{"error": {"code", "message"}}` as its structured
//! content. Each run's log is the resource `run://{id}/log`.

use std::time::Duration;

use rmcp::ErrorData;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    Resource, ResourceContents, ResourceTemplate, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use serde_json::{Value, json};
use utoipa::PartialSchema as _;

use crate::api::AppState;
use crate::api::body::JsonObject as Body;
use crate::api::error::ApiError;
use crate::api::runs;
use crate::api::schema::SubmitRunRequest;
use crate::run::{RunId, RunRecord};
use crate::store::RunFilter;

/// How long `start_run` waits by default: most agent turns finish well within it, and a
/// caller that wants longer says so.
const DEFAULT_WAIT_S: u64 = 60;
/// The longest `start_run` waits, as `POST /v1/runs?wait=` allows.
const MAX_WAIT_S: u64 = 600;
/// The most of a log one resource read returns: the tail, which says how the run ended.
/// `GET /v1/runs/{id}/logs` serves the whole file.
const MAX_LOG_TEXT: usize = 1 << 20;
/// Runs whose logs `resources/list` names, newest first.
const LISTED_LOGS: usize = 20;
/// Progress notifications are a display's, and once a second is enough for one.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// One MCP session's view of the bridge.
#[derive(Clone)]
pub struct BridgeMcp {
    state: AppState,
}

impl BridgeMcp {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }

    async fn start_run(&self, mut args: JsonObject, context: &RequestContext<RoleServer>) -> Reply {
        let wait_s = match args.remove("wait_s") {
            None | Some(Value::Null) => DEFAULT_WAIT_S,
            Some(value) => match value.as_u64().filter(|w| *w <= MAX_WAIT_S) {
                Some(wait) => wait,
                None => {
                    return Err(ApiError::bad_request(
                        "invalid_wait",
                        format!("`wait_s` must be a whole number from 0 to {MAX_WAIT_S}"),
                    ));
                }
            },
        };
        let spec = runs::validate(&self.state, &Body(args)).await?;
        let key = spec.contract_id.as_ref().map(|id| format!("contract:{id}"));
        let submitted = self.state.engine.submit(spec, key).await?;
        let record = submitted.record().clone();
        if record.is_finished() || wait_s == 0 {
            return Ok(record_json(&record));
        }

        // A client that gives up on the call (notifications/cancelled) stops the wait, not
        // the run: cancelling a run is the cancel_run tool's job.
        let progress = self.report_progress(record.id, context);
        let waited = tokio::select! {
            waited = self.state.engine.wait(record.id, Duration::from_secs(wait_s)) => waited,
            () = context.ct.cancelled() => Ok(None),
            () = progress => unreachable!("progress reports until it is dropped"),
        };
        let latest = waited.map_err(|e| ApiError::internal(&e))?;
        Ok(record_json(&latest.unwrap_or(record)))
    }

    /// While `start_run` waits, tells a client that asked for progress (a `progressToken`) how
    /// many events the run has logged, at most once per [`PROGRESS_EVERY`]. Never returns: the
    /// wait drops it.
    async fn report_progress(&self, run: RunId, context: &RequestContext<RoleServer>) {
        let token = context.meta.get_progress_token();
        let follow = self.state.engine.follow(run);
        let (Some(token), Some(mut follow)) = (token, follow) else {
            return std::future::pending().await;
        };
        loop {
            let events = *follow.latest_event.borrow_and_update();
            let note = ProgressNotificationParam::new(token.clone(), events as f64)
                .with_message(format!("run {run}: {events} events so far"));
            if context.peer.notify_progress(note).await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
            if follow.latest_event.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    async fn call(
        &self,
        request: CallToolRequestParams,
        context: &RequestContext<RoleServer>,
    ) -> Option<Reply> {
        let args = request.arguments.unwrap_or_default();
        let id = || {
            args.get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let reply = match request.name.as_ref() {
            "start_run" => self.start_run(args.clone(), context).await,
            "get_run" => runs::find(&self.state, &id())
                .await
                .map(|r| record_json(&r)),
            "cancel_run" => runs::stop(&self.state, &id())
                .await
                .map(|r| record_json(&r)),
            "list_adapters" => Ok(runs::adapter_list(&self.state).await),
            _ => return None,
        };
        Some(reply)
    }
}

/// What a tool answers: JSON, or the API error it would have been.
type Reply = Result<Value, ApiError>;

fn record_json(record: &RunRecord) -> Value {
    serde_json::to_value(record).expect("a run record serializes")
}

impl rmcp::ServerHandler for BridgeMcp {
    fn get_info(&self) -> ServerConfig {
        let capabilities = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .build();
        ServerConfig::new(capabilities)
            .with_server_info(Implementation::new(
                "headless-bridge",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(
                "Runs developer CLIs (codex, claude, gemini, profiles) headless. start_run starts \
                 a run and waits up to wait_s seconds; a run still going when that ends can be \
                 followed with get_run and stopped with cancel_run. Each run's log is the \
                 resource run://{id}/log.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(tools()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let name = request.name.to_string();
        match self.call(request, &context).await {
            Some(Ok(value)) => Ok(CallToolResult::structured(value).into()),
            Some(Err(error)) => Ok(tool_error(&error).into()),
            None => Err(ErrorData::invalid_params(
                format!("no tool is named `{name}`; tools/list names them"),
                None,
            )),
        }
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        let filter = RunFilter {
            limit: LISTED_LOGS,
            ..RunFilter::default()
        };
        let recent = self
            .state
            .engine
            .store()
            .list(filter)
            .await
            .map_err(|e| internal(&ApiError::internal(&e)))?;
        let resources = recent
            .iter()
            .map(|run| {
                Resource::new(
                    log_uri(&run.id.to_string()),
                    format!("log of run {}", run.id),
                )
                .with_mime_type("text/plain")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        let template = ResourceTemplate::new("run://{id}/log", "run-log")
            .with_title("A run's log")
            .with_description(
                "The run's output stream (stderr lines marked [stderr]), at most its last MiB",
            )
            .with_mime_type("text/plain");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let Some(id) = run_of_log_uri(&request.uri) else {
            return Err(ErrorData::resource_not_found(
                format!("no resource `{}`; logs are run://{{id}}/log", request.uri),
                None,
            ));
        };
        let bytes = runs::read_log(&self.state, id).await.map_err(|e| {
            if e.status.is_server_error() {
                internal(&e)
            } else {
                ErrorData::resource_not_found(e.message, None)
            }
        })?;
        let text = log_tail(&bytes, id);
        let contents = ResourceContents::text(text, request.uri.clone());
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

fn internal(error: &ApiError) -> ErrorData {
    ErrorData::internal_error(error.message.clone(), None)
}

/// A refused or failed call as a tool result the caller sees.
fn tool_error(error: &ApiError) -> CallToolResult {
    CallToolResult::structured_error(json!({
        "error": { "code": error.code, "message": error.message }
    }))
}

fn log_uri(id: &str) -> String {
    format!("run://{id}/log")
}

fn run_of_log_uri(uri: &str) -> Option<&str> {
    uri.strip_prefix("run://")?.strip_suffix("/log")
}

/// The log as text, cut to its last [`MAX_LOG_TEXT`] bytes with a line saying so.
fn log_tail(bytes: &[u8], id: &str) -> String {
    if bytes.len() <= MAX_LOG_TEXT {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let omitted = bytes.len() - MAX_LOG_TEXT;
    let tail = String::from_utf8_lossy(&bytes[omitted..]);
    format!("[{omitted} bytes omitted; GET /v1/runs/{id}/logs has the whole log]\n{tail}")
}

/// The tools, with JSON Schemas for their arguments. `start_run` takes the body of
/// `POST /v1/runs`, from the same schema the OpenAPI document shows, plus `wait_s`.
fn tools() -> Vec<Tool> {
    let mut start = serde_json::to_value(SubmitRunRequest::schema()).expect("a schema serializes");
    start["properties"]["wait_s"] = json!({
        "type": "integer", "minimum": 0, "maximum": MAX_WAIT_S,
        "description": format!(
            "seconds to wait for the run to finish (default {DEFAULT_WAIT_S}); 0 answers at once"
        ),
    });
    let by_id = json!({
        "type": "object",
        "properties": { "id": { "type": "string", "description": "the run's id" } },
        "required": ["id"],
    });
    vec![
        tool(
            "start_run",
            "Start a run of a CLI (codex, claude, gemini or a profile) and wait up to wait_s \
             seconds for it to finish. Answers with the run record: state `finished` with its \
             outcome, reason and output, or a run still in progress to follow with get_run.",
            start,
        ),
        tool("get_run", "Get a run's record by id.", by_id.clone()),
        tool(
            "cancel_run",
            "Cancel a queued or running run; answers with its record once it has stopped.",
            by_id,
        ),
        tool(
            "list_adapters",
            "List the adapters this bridge offers, each with its health (binary and login).",
            json!({ "type": "object", "properties": {} }),
        ),
    ]
}

fn tool(name: &'static str, description: &'static str, schema: Value) -> Tool {
    let Value::Object(schema) = schema else {
        unreachable!("every tool schema above is an object")
    };
    Tool::new(name, description, std::sync::Arc::new(schema))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_uris_name_their_run() {
        assert_eq!(run_of_log_uri(&log_uri("abc")), Some("abc"));
        assert_eq!(run_of_log_uri("run://abc/diff"), None);
        assert_eq!(run_of_log_uri("file:///etc/passwd"), None);
    }

    #[test]
    fn a_long_log_keeps_its_tail_and_says_so() {
        let mut log = vec![b'a'; MAX_LOG_TEXT];
        log.extend_from_slice(b"the end");
        let text = log_tail(&log, "r1");
        assert!(text.starts_with("[7 bytes omitted; GET /v1/runs/r1/logs"));
        assert!(text.ends_with("the end"));
    }

    #[test]
    fn start_run_takes_the_run_body_and_a_wait() {
        let start = tools()
            .into_iter()
            .find(|t| t.name == "start_run")
            .expect("listed");
        let properties = &start.input_schema["properties"];
        for field in ["adapter", "prompt", "repo", "tools", "timeout_s", "wait_s"] {
            assert!(properties.get(field).is_some(), "{field} is missing");
        }
        assert_eq!(start.input_schema["required"], json!(["adapter", "prompt"]));
    }
}

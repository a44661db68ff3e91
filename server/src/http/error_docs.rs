//! Completes the OpenAPI description with the error answers every route can give, so that
//! clients (and the schemathesis fuzzing of `make fuzz`) find each status the server may send
//! documented with the `{"error":{"code","message"}}` body, not only the ones each handler's
//! annotation lists.

use utoipa::Modify;
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

pub(crate) struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, openapi: &mut OpenApi) {
        add_probes(openapi);
        for (path, item) in openapi.paths.paths.iter_mut() {
            let admin = path.starts_with("/api/admin/");
            for operation in [
                item.get.as_mut(),
                item.put.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.patch.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                complete(operation, admin);
            }
        }
    }
}

/// Adds the error answers `operation` can give and does not document yet.
fn complete(operation: &mut Operation, admin: bool) {
    let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
    let has_body = operation.request_body.is_some();
    let mut add = |status: &str, description: &str| {
        operation
            .responses
            .responses
            .entry(status.to_owned())
            .or_insert_with(|| error_response(description));
    };
    add(
        "400",
        "Malformed request: unreadable JSON, query string or path parameter",
    );
    if secured {
        add("401", "Missing, malformed, revoked or expired access token");
    }
    if admin {
        add("403", "The caller is not an admin");
    }
    if has_body {
        add("413", "Body over the size limit");
        add("415", "Body that is not application/json");
        add("422", "Well-formed input that breaks a rule");
    }
    add("500", "Unexpected failure (details are logged, never sent)");
    add(
        "503",
        "The database is unreachable or too slow right now; try again shortly",
    );
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// The probes and metrics, served outside the API router, documented too.
fn add_probes(openapi: &mut OpenApi) {
    let text = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "text/plain",
                    ContentBuilder::new()
                        .schema(Some(utoipa::openapi::schema::Object::with_type(
                            utoipa::openapi::schema::Type::String,
                        )))
                        .build(),
                )
                .build(),
        )
    };
    let probe = |summary: &str, ok: &str, unavailable: Option<&str>| {
        let mut operation = OperationBuilder::new()
            .summary(Some(summary))
            .tag("operations")
            .build();
        operation
            .responses
            .responses
            .insert("200".to_owned(), text(ok));
        if let Some(description) = unavailable {
            operation
                .responses
                .responses
                .insert("503".to_owned(), error_response(description));
        }
        operation
    };
    let paths = &mut openapi.paths.paths;
    paths.entry("/healthz".to_owned()).or_insert_with(|| {
        PathItem::new(
            HttpMethod::Get,
            probe("The process is up (liveness)", "ok", None),
        )
    });
    paths.entry("/readyz".to_owned()).or_insert_with(|| {
        PathItem::new(
            HttpMethod::Get,
            probe(
                "Ready to serve: the database answers and the index is loaded",
                "ready",
                Some("The database is unreachable"),
            ),
        )
    });
    paths.entry("/metrics".to_owned()).or_insert_with(|| {
        PathItem::new(
            HttpMethod::Get,
            probe(
                "Prometheus metrics (text exposition format)",
                "the metrics",
                None,
            ),
        )
    });
}

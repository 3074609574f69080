//! What the test S3 server and `examples/s3_server.rs` share (the example includes this file).

use std::future::Future;

/// `service` with each request handled to its end in a task of its own. hyper drops a request's
/// handler when its client goes away; s3s-fs writes an object in steps (its bytes, then its
/// metadata), so a client killed right after sending a body could leave an object without its
/// metadata: what real S3, whose PUT is atomic, never does (a crash test's `kill -9` found it).
pub fn atomic_requests(
    service: s3s::service::S3Service,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = s3s::HttpResponse,
    Error = s3s::HttpError,
    Future = impl Future<Output = Result<s3s::HttpResponse, s3s::HttpError>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let service = service.clone();
        async move {
            tokio::spawn(async move { hyper::service::Service::call(&service, req).await })
                .await
                .expect("request handler")
        }
    })
}

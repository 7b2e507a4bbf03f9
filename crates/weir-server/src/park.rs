//! A long-poll's wait, moved out of its request so that a parked connection holds
//! almost nothing.
//!
//! A handler that must wait (a lease on an empty queue, a task, group or cancel
//! watch) does everything a request needs first — routing, auth, the ingress
//! limit, parsing and checking its input — and then, instead of awaiting the
//! store, returns [`park`]: a placeholder response carrying the rest of its work
//! as one small boxed future that owns only what the answer needs (a broker
//! handle, a queue name, a deadline). The request, its headers and body, and
//! every middleware's future are dropped when the router returns.
//!
//! Who awaits the future: the lean HTTP/1.1 connection (`http1`) marks each of
//! its requests with [`ParkHere`] and awaits a parked future itself, next to its
//! socket; for anything else (hyper under TLS, `app()` driven by `oneshot` in
//! tests) the outermost layer, [`resolve`], awaits it in place, so a handler's
//! answer is the same whoever serves it. Layers that observe answers (metrics)
//! wrap the future with [`then`] rather than reading the placeholder.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The rest of a parked request's work: it resolves to the answer.
pub type Parked = Pin<Box<dyn Future<Output = Response> + Send>>;

/// A value carried in a response's extensions and taken out once. Extensions
/// must be `Clone + Sync`; what travels here (a parked future, the worker
/// channel's takeover of a socket) is neither, so it sits in a shared slot.
pub struct Once<T>(Arc<Mutex<Option<T>>>);

impl<T> Clone for Once<T> {
    fn clone(&self) -> Self {
        Once(self.0.clone())
    }
}

impl<T: Send + 'static> Once<T> {
    /// Puts `value` in `response`'s extensions.
    pub fn put(response: &mut Response, value: T) {
        response
            .extensions_mut()
            .insert(Once(Arc::new(Mutex::new(Some(value)))));
    }

    /// Takes the value out of `response`, if it carries one.
    pub fn take(response: &mut Response) -> Option<T> {
        let once = response.extensions_mut().remove::<Once<T>>()?;
        let taken = once.0.lock().unwrap_or_else(|e| e.into_inner()).take();
        taken
    }
}

/// The extension of a placeholder answer: the rest of its request's work.
pub type Park = Once<Parked>;

/// A placeholder's work followed by `then` on its answer; a response that is
/// not a placeholder goes to `then` at once.
pub fn then(
    mut response: Response,
    then: impl FnOnce(Response) -> Response + Send + 'static,
) -> Response {
    match Park::take(&mut response) {
        Some(work) => park(async move { then(work.await) }),
        None => then(response),
    }
}

/// A placeholder answer whose real one is `work`'s.
pub fn park(work: impl Future<Output = Response> + Send + 'static) -> Response {
    let work: Parked = Box::pin(work);
    let mut response = StatusCode::OK.into_response();
    Park::put(&mut response, work);
    response
}

/// A request extension: whoever serves this request awaits parked work itself,
/// so [`resolve`] passes the placeholder up.
#[derive(Clone, Copy, Debug)]
pub struct ParkHere;

/// The outermost layer: awaits a parked request's work in place, unless the
/// request is marked [`ParkHere`].
pub async fn resolve(req: Request, next: Next) -> Response {
    let here = req.extensions().get::<ParkHere>().is_some();
    let mut response = next.run(req).await;
    if here {
        return response;
    }
    match Park::take(&mut response) {
        Some(work) => work.await,
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn router() -> Router {
        Router::new()
            .route(
                "/wait",
                get(|| async { park(async { (StatusCode::ACCEPTED, "later").into_response() }) }),
            )
            .route("/now", get(|| async { "now" }))
            .layer(axum::middleware::from_fn(resolve))
    }

    async fn text(r: Response) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn parked_work_is_awaited_in_place_unless_the_caller_parks_it() {
        // Without the mark: the answer is the parked work's.
        let r = router()
            .oneshot(Request::get("/wait").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(text(r).await, "later");

        // With it: a placeholder whose work the caller awaits.
        let mut req = Request::get("/wait").body(Body::empty()).unwrap();
        req.extensions_mut().insert(ParkHere);
        let mut r = router().oneshot(req).await.unwrap();
        let work = Park::take(&mut r).expect("a placeholder");
        let r = then(park(work), |mut r| {
            r.headers_mut()
                .insert("x-then", axum::http::HeaderValue::from_static("1"));
            r
        });
        let r = Park::take(&mut { r }).unwrap().await;
        assert_eq!(r.headers()["x-then"], "1");
        assert_eq!(text(r).await, "later");

        // An answer that is not parked goes through untouched.
        let mut req = Request::get("/now").body(Body::empty()).unwrap();
        req.extensions_mut().insert(ParkHere);
        let mut r = router().oneshot(req).await.unwrap();
        assert!(Park::take(&mut r).is_none());
        assert_eq!(text(r).await, "now");
    }
}

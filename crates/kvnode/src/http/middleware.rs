//! Middleware of every route: request metrics and `request_timeout`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::{HttpMessage, HttpRequest, ResponseError};
use vclock_proto::{VClock, Write};

use crate::error::{Error, Result};
use crate::node::Node;
use crate::observe::metrics::{Metrics, RouteId};

// ---- request metrics and timeout -------------------------------------------------

/// Middleware of every route: counts the request in flight, answers 408 when it
/// takes longer than `request_timeout` (head to answer: body upload and causal
/// wait included), and records its route, method, status and latency.
///
/// A write handed to the writer ([`Submitted::mark`]) is past the point of
/// refusal: it will be applied even if nobody waits for it, and a 4xx must not
/// say otherwise. Such a request gets its real answer, however late.
#[derive(Clone, Debug)]
pub struct Observe {
    /// The route's series.
    pub route: RouteId,
    /// The node's metrics.
    pub metrics: Arc<Metrics>,
    /// `request_timeout`.
    pub timeout: Duration,
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<std::result::Result<Self::Transform, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service: Rc::new(service),
            observe: self.clone(),
        }))
    }
}

#[derive(Debug)]
/// [`Observe`] around one route's service.
pub struct ObserveService<S> {
    service: Rc<S>,
    observe: Observe,
}

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<BoxBody>;
    type Error = actix_web::Error;
    type Future = LocalFuture<std::result::Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let request = req.request().clone();
        let method = req.method().clone();
        let observe = self.observe.clone();
        let answer = self.service.call(req);
        Box::pin(async move {
            let in_flight = observe.metrics.request_started();
            let mut answer = std::pin::pin!(answer);
            let answer = match tokio::time::timeout(observe.timeout, &mut answer).await {
                Ok(answer) => Some(answer),
                Err(_) if Submitted::is_marked(&request) => Some(answer.await),
                Err(_) => None,
            };
            let response = match answer {
                Some(Ok(response)) => response.map_into_boxed_body(),
                Some(Err(e)) => ServiceResponse::from_err(e, request),
                None => {
                    let error = Error::RequestTimeout(format!(
                        "the request took longer than the limit of {:?} (request_timeout)",
                        observe.timeout
                    ));
                    ServiceResponse::new(request, error.error_response())
                }
            };
            drop(in_flight);
            observe
                .metrics
                .request(observe.route, &method, response.status(), started.elapsed());
            Ok(response)
        })
    }
}

/// Put in a request's extensions once its write is handed to the writer (see
/// [`Observe`], which holds a clone of the request: clones share extensions).
#[derive(Clone, Copy, Debug)]
pub struct Submitted;

impl Submitted {
    /// Marks `req`'s write as handed to the writer.
    pub fn mark(req: &HttpRequest) {
        req.extensions_mut().insert(Submitted);
    }

    fn is_marked(req: &HttpRequest) -> bool {
        req.extensions().contains::<Submitted>()
    }
}

/// Waits for `context`, then hands the writes (one, or an atomic
/// transaction) to the writer and waits for their event.
pub async fn submit_write(
    req: &HttpRequest,
    node: &Node,
    writes: Vec<Write>,
    context: Option<&VClock>,
) -> Result<Arc<vclock_proto::Event>> {
    if let Some(context) = context {
        node.wait_for(context).await?;
    }
    Submitted::mark(req);
    node.write_all(writes).await
}

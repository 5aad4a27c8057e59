//! Type erasure: typed handlers become one callable shape.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{JobContext, JobError};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A handler with its payload and result types erased to JSON.
pub(crate) type ErasedHandler = Arc<dyn Fn(Value, JobContext) -> BoxFuture<Result<Value, JobError>> + Send + Sync>;

pub(crate) fn erase<T, R, F, Fut>(f: F) -> ErasedHandler
where
    T: DeserializeOwned + Send + 'static,
    R: Serialize + Send + 'static,
    F: Fn(T, JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, JobError>> + Send + 'static,
{
    let f = Arc::new(f);
    Arc::new(move |payload: Value, ctx: JobContext| {
        let f = f.clone();
        Box::pin(async move {
            // A payload that does not fit the handler's type will not fit on
            // a retry either, so this failure is final.
            let typed: T = serde_json::from_value(payload)
                .map_err(|e| JobError::fatal(format!("payload does not match the `{}` handler: {e}", ctx.kind())))?;
            let out = f(typed, ctx).await?;
            serde_json::to_value(out).map_err(|e| JobError::fatal(format!("result is not JSON: {e}")))
        })
    })
}

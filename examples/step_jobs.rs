//! BullMQ's "process step jobs" pattern, in kyu.
//!
//! An order goes through steps; the step reached is saved in the checkpoint
//! (BullMQ's `updateData`, but fenced by the claim's token), so whatever
//! happens, a later run resumes at the right step:
//!
//! 1. reserve stock, then wait 200 ms for the payment provider: a snooze
//!    (`moveToDelayed`), which does not spend an attempt;
//! 2. add one shipping job per item as children and wait for them
//!    (`moveToWaitingChildren`): the order is released until they finish;
//! 3. finish with the children's results.
//!
//! Children get ids derived from the order's, so adding them again after a
//! crash creates nothing new: the add is idempotent.
//!
//! cargo run -p kyu-examples --example step_jobs

use std::time::Duration;

use kyu::{Client, JobContext, JobError, JobSpec, JobState, SqliteStore, Worker};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

#[derive(Serialize, Deserialize, Default, Clone, Copy, PartialEq, Debug)]
enum Step {
    #[default]
    Reserve,
    Ship,
    Finish,
}

#[derive(Serialize, Deserialize, Default)]
struct Progress {
    step: Step,
    reservation: Option<String>,
}

#[derive(Deserialize)]
struct Order {
    id: String,
    items: Vec<String>,
}

async fn process_order(order: Order, ctx: JobContext) -> Result<Value, JobError> {
    let mut p: Progress = ctx.checkpoint_as().unwrap_or_default();
    loop {
        match p.step {
            Step::Reserve => {
                p.reservation = Some(format!("reservation-{}", order.id));
                p.step = Step::Ship;
                ctx.save_checkpoint(&p).await?;
                // The payment provider needs a moment: run again in 200 ms.
                return Err(ctx.snooze(Duration::from_millis(200)));
            }
            Step::Ship => {
                let shipped = ctx.dependency_results();
                if shipped.len() < order.items.len() {
                    let children = order
                        .items
                        .iter()
                        .map(|item| {
                            let mut s = JobSpec::new("shipping", "ship-item", json!({"item": item}));
                            s.id = Some(format!("{}-ship-{item}", order.id));
                            s
                        })
                        .collect();
                    // Released until the children finish; the next run
                    // finds their results here and moves on.
                    ctx.wait_for_children(children).await?;
                    continue;
                }
                p.step = Step::Finish;
                ctx.save_checkpoint(&p).await?;
            }
            Step::Finish => {
                let mut tracking: Vec<String> =
                    ctx.dependency_results().values().filter_map(|v| v["tracking"].as_str().map(String::from)).collect();
                tracking.sort();
                return Ok(json!({"reservation": p.reservation, "tracking": tracking, "attempt": ctx.attempt()}));
            }
        }
    }
}

/// Runs the example; the test in tests/ calls it too.
pub async fn run() -> Result<Value, Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(dir.path().join("kyu.db"), Default::default())?;
    let client = Client::new(store.clone());
    let order = client
        .enqueue(JobSpec::new("orders", "process-order", json!({"id": "o-17", "items": ["book", "lamp"]})))
        .await?;

    let worker = Worker::builder(store)
        .queue("orders")
        .queue("shipping")
        .concurrency(4)
        .handle("process-order", process_order)
        .handle("ship-item", |p: Value, ctx: JobContext| async move {
            Ok(json!({"tracking": format!("TRK-{}-{}", p["item"].as_str().unwrap_or("?"), ctx.attempt())}))
        })
        .build();
    let stop = kyu::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));
    let done = client.wait(&order.id, Duration::from_secs(30)).await?;
    stop.cancel();
    running.await?;

    if done.state != JobState::Completed {
        return Err(format!("the order ended {}: {:?}", done.state, done.errors).into());
    }
    let result = done.result.unwrap_or(Value::Null);
    let expected = json!({"reservation": "reservation-o-17", "tracking": ["TRK-book-1", "TRK-lamp-1"], "attempt": 1});
    if result != expected {
        return Err(format!("unexpected result {result}, wanted {expected}").into());
    }
    Ok(result)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let result = run().await?;
    println!("order processed in one attempt, across a snooze and a wait for two children: {result}");
    Ok(())
}
